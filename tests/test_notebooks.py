"""The colab/ notebooks run top to bottom in their fast mode (VISJAX_NOTEBOOK_FAST=1: tiny sizes, no training),
and link nothing outside the repository. Needs the test extra's nbclient, nbformat and ipykernel."""

import os
import pathlib
import re
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'colab').glob('*.ipynb'))
_LINK = re.compile(r'https?://|www\.')


@pytest.mark.parametrize('path', NOTEBOOKS + sorted((ROOT / 'colab').glob('*.md')) + [ROOT / 'README.md'],
                         ids=lambda p: p.name)
def test_notebook_links_stay_in_the_repository(path):
  assert not _LINK.search(path.read_text()), f'{path.name} links outside the repository'


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  pytest.importorskip('ipykernel')
  if path.name == 'port_checkpoint.ipynb':
    pytest.importorskip('torch')
  monkeypatch.setenv('VISJAX_NOTEBOOK_FAST', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))
  work = tmp_path / 'checkout'  # The notebooks write under runs/ of the folder they run in.
  work.mkdir()
  for name in ('configs', 'tests', 'colab'):
    (work / name).symlink_to(ROOT / name)
  notebook = nbformat.read(path, as_version=4)
  start = time.time()
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(work)}}).execute()
  errors = [o for c in notebook.cells for o in c.get('outputs', []) if o.get('output_type') == 'error']
  assert not errors, errors
  images = [o for c in notebook.cells for o in c.get('outputs', []) if 'image/gif' in o.get('data', {})]
  assert images, 'the notebook shows no overlay'
  assert time.time() - start < 150
