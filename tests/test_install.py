"""visjax installs and imports without its optional extras (TensorFlow: `data`; torch: `torch`)."""

import configparser
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Modules a user of the core install (no extras) reaches: models, kernels, conversion from .npz, training engine,
# evaluation, the synthetic generator and the json validator.
CORE_MODULES = (
    'visjax', 'pallas_kernels', 'pallas_kernels.msda', 'visjax.models.layers.msdeform_attn',
    'visjax.models.backbones.resnet', 'visjax.models.backbones.swin', 'visjax.models.idol.model',
    'visjax.models.idol.method', 'visjax.models.idol.tracker', 'visjax.matching', 'visjax.losses',
    'visjax.convert', 'visjax.convert.rules_idol', 'visjax.train.trainer', 'visjax.train.evaluate',
    'visjax.main', 'visjax.visualize', 'visjax.evaluation.ytvis', 'visjax.evaluation.results',
    'data_pipeline.synthetic', 'data_pipeline.ytvis_json',
)


def test_core_modules_import_with_tensorflow_and_torch_blocked():
  script = textwrap.dedent(f"""
      import importlib, importlib.abc, sys

      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in ('tensorflow', 'torch', 'tensorflow_datasets'):
            raise ImportError(f'{{name}} is blocked: not part of the core install')
          return None

      sys.meta_path.insert(0, Block())
      for m in {CORE_MODULES!r}:
        importlib.import_module(m)
      leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch'))
      assert not leaked, leaked
      print('ok')
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_core_requirements_exclude_the_extras():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  core = cfg['options']['install_requires'].lower()
  for heavy in ('tensorflow', 'torch'):
    assert heavy not in core, f'{heavy} must stay an extra, not a core requirement'
  extras = cfg['options.extras_require']
  assert 'tensorflow' in extras['data'] and 'torch' in extras['torch']


def test_data_pipeline_names_no_method():
  """Input is method-neutral (docs/INTERFACES.md §1): samplers and augmentations are config data, so no file
  under data_pipeline/ mentions a method, in code or prose."""
  import re  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data_pipeline')
  pattern = re.compile(r'\b(idol|vita|visolo|iai)\b', re.IGNORECASE)
  hits = []
  for name in sorted(os.listdir(root)):
    if name.endswith('.py'):
      with open(os.path.join(root, name)) as f:
        hits += [f'{name}:{i}: {line.strip()}' for i, line in enumerate(f, 1) if pattern.search(line)]
  assert not hits, hits
