import ast
from pathlib import Path

UI = Path(__file__).resolve().parent.parent / "ui"


def test_ui_helpers_do_not_import_streamlit():
    for path in UI.glob("*.py"):
        if path.name == "widgets.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "streamlit" for n in names), path.name
