"""Trains the iris classifier and saves it as model.joblib next to this file.

The iris data set ships inside scikit-learn, so nothing is downloaded.
"""
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

iris = load_iris()
x_train, x_test, y_train, y_test = train_test_split(
    iris.data, iris.target, test_size=0.2, random_state=0, stratify=iris.target
)
model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
out = Path(__file__).resolve().parent / "model.joblib"
joblib.dump(model, out)
print(f"test accuracy {model.score(x_test, y_test):.3f}; saved {out}")
