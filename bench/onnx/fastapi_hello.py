"""Peer of the Python predictor path: a FastAPI app returning what examples/hello returns.

  POST /hello  {"name": "bench"} -> {"message": "hello, bench!"}

examples/hello's PythonPredictor answers `{"message": f"{greeting}, {name}!"}` (greeting
"hello", name "world" when the payload has none); this is the app a user would write for it
instead, in the form bench/onnx/fastapi_app.py found fastest (`async def` with pydantic request
and response models). No onnxruntime, no model: only the HTTP path and the JSON.

Run: uvicorn fastapi_hello:app --app-dir bench/onnx --workers 1 --no-access-log
"""
from fastapi import FastAPI
from pydantic import BaseModel

GREETING = "hello"

app = FastAPI()


class HelloRequest(BaseModel):
    name: str = "world"


class HelloResponse(BaseModel):
    message: str


@app.post("/hello")
async def hello(req: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"{GREETING}, {req.name}!")
