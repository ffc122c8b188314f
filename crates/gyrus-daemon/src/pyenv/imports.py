"""Prints the top-level modules that a project's Python files import, as one JSON object:
{"imports": {module: [files importing it]}, "available": [those this interpreter can import]}.

gyrus runs it at deploy with the base interpreter (argv[1]: the project snapshot). It parses the
files with ast and imports none of them. Left out: relative imports, the standard library, and
names the project defines at its top (a .py file or a folder there); a file that does not
parse, for any reason, is skipped on its own.
"""

import ast
import importlib.util
import json
import os
import sys

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_FILES = 5000


def main(root):
    # The project's own top-level modules: a data folder deeper down named like a package
    # (models/sklearn/) does not hide that package's import.
    own = set()
    for entry in os.listdir(root):
        if entry.endswith(".py"):
            own.add(entry[:-3])
        elif os.path.isdir(os.path.join(root, entry)) and not entry.startswith("."):
            own.add(entry)
    sources = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                sources.append(os.path.join(dirpath, name))
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    imports = {}
    for path in sources[:MAX_FILES]:
        try:
            if os.path.getsize(path) > MAX_FILE_BYTES:
                continue
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except Exception:  # noqa: BLE001 - deep nesting (RecursionError), odd bytes: skip the file
            continue  # a broken file shows its own error when the predictor loads
        rel = os.path.relpath(path, root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if not top or top in own or top in stdlib or top == "__future__":
                    continue
                files = imports.setdefault(top, [])
                if rel not in files:
                    files.append(rel)
    available = []
    for module in sorted(imports):
        try:
            if importlib.util.find_spec(module) is not None:
                available.append(module)
        except (ImportError, ValueError):
            pass
    json.dump({"imports": imports, "available": available}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
