"""JAX's persistent compilation cache is on by default in `python -m visjax.main`: the first run stores the
compiled init and train step, a second run of the same config compiles nothing new."""

import os

from tests import train_toy
from visjax import main


def test_cache_folder_from_environment(tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  old = {n: getattr(jax.config, n) for n in names}
  config = train_toy.get_config()
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    monkeypatch.setenv(main.CACHE_ENV, 'off')
    assert main.enable_compilation_cache(config) == ''
    assert not jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(main.CACHE_ENV, str(tmp_path / 'cache'))
    assert main.enable_compilation_cache(config) == str(tmp_path / 'cache')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache')
    assert jax.config.jax_persistent_cache_min_compile_time_secs == main.CACHE_MIN_COMPILE_SECS
    monkeypatch.setenv(main.CACHE_ENV, str(tmp_path / 'other'))  # JAX already has a folder: kept
    assert main.enable_compilation_cache(config) == str(tmp_path / 'cache')
  finally:
    for n, v in old.items():
      jax.config.update(n, v)


def test_second_run_compiles_nothing_new(tmp_path):
  cache = tmp_path / 'cache'
  # JAX's own variable (set by `make test` for the whole run) would take precedence over visjax's.
  env = {main.CACHE_ENV: str(cache), 'JAX_COMPILATION_CACHE_DIR': ''}
  first = train_toy.run_main(str(tmp_path / 'a'), '--config.train.num_steps=2', env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  entries = sorted(os.listdir(cache))
  assert len(entries) >= 2  # at least the jitted init and the train step
  second = train_toy.run_main(str(tmp_path / 'b'), '--config.train.num_steps=2', env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert sorted(os.listdir(cache)) == entries
