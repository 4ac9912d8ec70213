"""The CEL parser's Lark tables are built once per user and kept in the cache directory, so a
fresh process does not rebuild them (the bulk of a small `legato run` before); a stale, corrupt
or unwritable cache costs a rebuild, never an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Compiles and evaluates one expression in a fresh process and says whether Lark built its
# LALR tables (False: they came from the cache).
_CHILD = r"""
import json
import lark.parsers.lalr_analysis as analysis
builds = []
real = analysis.LALR_Analyzer.compute_lalr
def counted(self):
    builds.append(1)
    return real(self)
analysis.LALR_Analyzer.compute_lalr = counted
from legato.cel import CelCompiler
value = CelCompiler().compile("[1, 2, 3].size() + 1").evaluate({})
print(json.dumps({"value": value, "built": bool(builds)}))
"""


def _fresh_process(cache_home) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]  # nothing said about the cache
    return json.loads(proc.stdout)


def _cache_files(cache_home):
    return sorted((cache_home / "legato").glob("cel-parser-*"))


def test_the_parser_tables_are_built_once_and_loaded_by_the_next_process(tmp_path):
    assert _fresh_process(tmp_path) == {"value": 4, "built": True}
    assert len(_cache_files(tmp_path)) == 1
    assert _fresh_process(tmp_path) == {"value": 4, "built": False}


def test_a_corrupt_or_stale_cache_is_rebuilt_and_replaced(tmp_path):
    _fresh_process(tmp_path)
    (cache,) = _cache_files(tmp_path)
    for garbage in (b"\x00not a pickle\n\x80\x04garbage", cache.read_bytes()[:200], b"0" * 64 + b"\n" + b"x"):
        cache.write_bytes(garbage)  # torn write, truncated file, a digest of another grammar
        assert _fresh_process(tmp_path) == {"value": 4, "built": True}
        assert _fresh_process(tmp_path) == {"value": 4, "built": False}  # rewritten whole


def test_an_unusable_cache_directory_only_means_building_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    assert _fresh_process(blocker) == {"value": 4, "built": True}
    readonly = tmp_path / "ro"
    (readonly / "legato").mkdir(parents=True)
    (readonly / "legato").chmod(0o500)
    try:
        assert _fresh_process(readonly)["value"] == 4
    finally:
        (readonly / "legato").chmod(0o700)
