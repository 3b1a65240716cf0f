"""The notebooks run top to bottom on a fresh kernel, and the committed copies carry
their outputs (plots visible on the repository's web page).

They execute in a scratch copy, in order (03 reuses the embeddings 01 stores in the
shared ``_work/``), so the committed files are never rewritten by a test run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NEEDS_FMNIST = {"01_quickstart.ipynb", "03_classes_over_time.ipynb"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def test_there_are_the_three_stories():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_index_kinds.ipynb",
            "03_classes_over_time.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_carry_small_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("outputs") or c["execution_count"] for c in code), \
        f"{path.name}: run it before committing (its outputs are what readers see)"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    assert path.stat().st_size < 400_000, f"{path.name}: outputs too large to commit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, scratch):
    from faissclass.data import FASHION_MNIST_DIR

    if path.name in NEEDS_FMNIST and not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist absent")
    copy = scratch / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(scratch)}})
    client.execute()  # raises CellExecutionError naming the cell on any failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
