"""A malformed-input generator (issue 8, "Done when"): hundreds of bad inputs through the CLI.

Mutations of every example (keys deleted, duplicated and retyped; values swapped for huge
numbers, NaN, infinity, deep nesting, long strings; bad UTF-8; truncation), bombs (a YAML alias
"billion laughs", ``${}`` and CEL doubling), deep nesting, huge numbers, and bad options and
environment variables (``--store``, ``?busy_timeout=``, ``LEGATO_LEASE_TTL``, ``-p``,
``--workspace``), run through ``legato validate`` and ``legato run``. For every case: the exit
code is 0, 1 or 2; nothing says "Traceback", "internal error" or that a plugin broke (INTERNALLY_FAILED, "a bug
in the plugin"); it ends within 10 s; and the
process's peak RSS stays under 512 MB.

The bulk runs in-process (click's CliRunner, which reports an uncaught exception instead of
exiting) inside one worker subprocess, whose peak RSS is measured; a sample also runs as real
``legato`` processes, each measured with ``os.wait4``. A case that hangs is killed with its
worker, which restarts after it. Deterministic: ``LEGATO_FUZZ_SEED`` (default 8) and
``LEGATO_FUZZ_CASES`` (default 600; raise it locally, e.g. 3000) choose the cases.
``pytest -s`` prints a one-line summary.
"""

from __future__ import annotations

import json
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
LEGATO = str(Path(sys.executable).parent / "legato")
SEED = int(os.environ.get("LEGATO_FUZZ_SEED", "8"))
CASES = int(os.environ.get("LEGATO_FUZZ_CASES", "600"))
SUBPROCESS_EVERY = 16  # every 16th case also runs as a real `legato` process
LIMIT_SECONDS = 10.0
LIMIT_RSS_MB = 512
RUNNABLE = {"etl.json", "params.yaml"}  # quick to run for real; the others need docker or sleep

NOOP = {"workflow": {"id": "fuzz", "steps": [{"step": {"id": "a", "type": "noop"}}]}}


@dataclass
class Case:
    """One input: CLI arguments (``{dir}`` is the case's directory), files to write there, env."""

    name: str
    args: list[str]
    files: dict[str, bytes | Callable[[], bytes]] = field(default_factory=dict)  # a callable: built when run
    env: dict[str, str] = field(default_factory=dict)


def _doc(params: dict | None = None, steps: list | None = None, **workflow) -> bytes:
    wf = {"id": "fuzz", **workflow}
    if params is not None:
        wf["params"] = params
    wf["steps"] = steps or [{"step": {"id": "a", "type": "noop"}}]
    return json.dumps({"workflow": wf}).encode()


def _run(name: str, text, suffix: str = ".json", *extra: str, env: dict | None = None) -> Case:
    file = f"wf{suffix}"
    return Case(name, ["run", f"{{dir}}/{file}", "--store", "sqlite:///{dir}/s.db", "--workspace", "{dir}/runs",
                       *extra], {file: text}, env or {})


def _validate(name: str, text, suffix: str = ".json") -> Case:
    return Case(name, ["validate", f"{{dir}}/wf{suffix}"], {f"wf{suffix}": text})


# -- the fixed cases: bombs, nesting, numbers, options ------------------------------------------


def _bombs() -> list[Case]:
    cases = []
    laughs = ['x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = ("\n".join(laughs) + "\nworkflow: {id: b, steps: [{step: {id: a, type: noop}}]}\n").encode()
    cases += [_validate("yaml-billion-laughs", bomb, ".yaml"), _run("yaml-billion-laughs", bomb, ".yaml")]
    inside = ("workflow:\n  id: b\n  params:\n    x: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
              + "".join(f"    x{i}: &x{i} [" + ", ".join([f"*x{i - 1}" if i > 1 else "*x0"] * 10) + "]\n"
                        for i in range(1, 9))
              + "  steps: [{step: {id: a, type: noop}}]\n").encode()
    cases.append(_run("yaml-laughs-in-params", inside, ".yaml"))
    merge = ("base: &b {type: noop}\n" + "".join(f"m{i}: &m{i} {{<<: *{'b' if i == 0 else f'm{i - 1}'}, "
                                                 f"k{i}: [*b, *b, *b, *b]}}\n" for i in range(30))
             + "workflow: {id: b, steps: [{step: {id: a, type: noop}}]}\n").encode()
    cases.append(_validate("yaml-merge-key-chain", merge, ".yaml"))
    cases.append(_validate("yaml-recursive-alias", b"workflow: &w {id: r, me: *w, steps: []}\n", ".yaml"))
    cases.append(_run("yaml-recursive-param", b"workflow:\n  id: r\n  params: {x: &x [*x]}\n"
                                              b"  steps: [{step: {id: a, type: noop}}]\n", ".yaml"))
    for n in (20, 30, 40):
        params = {"s0": "xy"} | {f"s{i}": f"${{s{i - 1}}}${{s{i - 1}}}" for i in range(1, n + 1)}
        cases.append(_run(f"interpolation-doubling-{n}", _doc(params)))
        cel = {"s0": "xy"} | {f"s{i}": {"type": "STRING", "expression": f"s{i - 1} + s{i - 1}"} for i in range(1, n + 1)}
        cases.append(_run(f"cel-doubling-{n}", _doc(cel)))
        lists = {"l0": [1, 2]} | {f"l{i}": {"type": "LONG_ARRAY", "expression": f"l{i - 1} + l{i - 1}"}
                                  for i in range(1, n + 1)}
        cases.append(_run(f"cel-list-doubling-{n}", _doc(lists)))
    step_params = {"s0": "xy"} | {f"s{i}": f"${{s{i - 1}}}${{s{i - 1}}}" for i in range(1, 31)}
    cases.append(_run("interpolation-doubling-in-a-step", _doc(
        steps=[{"step": {"id": "a", "type": "noop", "params": step_params}}])))
    many = {"s": "x" * 4096, "t": "${s}" * 200_000}
    cases.append(_run("interpolation-many-references", _doc(many)))
    cases.append(_run("interpolation-many-references-in-an-array", _doc(
        {"s": "x" * 4096, "t": ["${s}" * 200] * 2000})))
    mapped = {"s": "x" * 65536, "l": {"type": "STRING_ARRAY", "expression": "intsBetween(0, 100000).map(i, s)"}}
    cases.append(_run("cel-map-of-a-long-string", _doc(mapped)))
    grow = {"s0": "x" * 16} | {f"s{i}": {"type": "STRING", "expression": " + ".join([f"s{i - 1}"] * 16)}
                                for i in range(1, 4)}  # s3 is 64 KiB
    grow |= {"s4": {"type": "STRING", "expression": " + ".join(["s3"] * 8)},  # 512 KiB
             "l": {"type": "STRING_ARRAY", "expression": "intsBetween(0, 100000).map(i, s4 + s4)"}}
    cases.append(_run("cel-map-of-concatenations", _doc(grow)))
    total = {f"p{i}": {"type": "STRING", "expression": f"{'s + ' * 15}s"} for i in range(40)}
    cases.append(_run("cel-many-big-values", _doc({"s": "x" * 60000} | total)))
    cases.append(_run("cel-nested-comprehensions", _doc(
        {"l": {"type": "ARRAY", "expression": "intsBetween(0, 1000).map(i, intsBetween(0, 1000).map(j, i * j))"}})))
    return cases


def _nesting() -> list[Case]:
    cases = []
    for depth in (65, 500, 1000, 100_000):
        value = "[" * depth + "]" * depth
        text = ('{"workflow": {"id": "d", "params": {"x": {"type": "ARRAY", "value": ' + value
                + '}}, "steps": [{"step": {"id": "a", "type": "noop"}}]}}').encode()
        cases.append(_validate(f"json-nesting-{depth}", text))
        objects = '{"a": ' * depth + "1" + "}" * depth
        cases.append(_validate(f"json-object-nesting-{depth}", ('{"workflow": {"id": "d", "params": {"x": '
                                                                 + objects + '}, "steps": []}}').encode()))
        cases.append(_validate(f"yaml-flow-nesting-{depth}", ("workflow:\n  id: d\n  params:\n    x: " + value
                                                              + "\n  steps: [{step: {id: a, type: noop}}]\n").encode(),
                               ".yaml"))
        if depth <= 1000:
            block = "".join("  " * i + "- \n" for i in range(depth)).encode()
            cases.append(_validate(f"yaml-block-nesting-{depth}", b"workflow:\n  id: d\n  params:\n    x:\n" + block,
                                   ".yaml"))
        cases.append(_validate(f"top-level-nesting-{depth}", value.encode()))
    cases.append(_run("step-params-nesting-100", _doc(steps=[{"step": {"id": "a", "type": "noop", "params": {
        "outputs": json.loads("[" * 100 + "]" * 100)}}}])))
    return cases


def _numbers() -> list[Case]:
    cases = []
    for digits in (19, 20, 101, 4301, 100_000):
        n = "9" * digits
        text = '{"workflow": {"id": "n", "params": {"n": %s, "l": {"type": "LONG", "value": %s}}, "steps": [' \
               '{"step": {"id": "a", "type": "noop", "retry_policy": {"error_retry_limit": %s}, "timeout": %s}}]},' \
               ' "properties": {"step_concurrency": %s}}' % (n, n, n, n, n)
        cases.append(_validate(f"integer-{digits}-digits", text.encode()))
        cases.append(_run(f"integer-{digits}-digits", text.encode()))
        cases.append(_validate(f"yaml-integer-{digits}-digits", f"workflow: {{id: n, params: {{n: {n}}}, steps: "
                                                                 f"[{{step: {{id: a, type: noop}}}}]}}\n".encode(), ".yaml"))
    for number in ("1e309", "-1e309", "1e-400", "NaN", "Infinity", "-Infinity", "1" * 400 + ".5"):
        text = ('{"workflow": {"id": "n", "timeout": %s, "params": {"d": %s, "x": {"type": "DOUBLE", "value": %s}},'
                ' "steps": [{"step": {"id": "a", "type": "noop", "timeout": %s, "retry_policy": {"backoff": '
                '{"base": %s, "exponent": %s, "cap": %s, "jitter": %s}}}}]}}' % ((number,) * 8)).encode()
        cases.append(_run(f"number-{number[:12]}", text))
    for number in (".nan", ".inf", "-.inf", "1e999"):
        text = (f"workflow: {{id: n, timeout: {number}, params: {{d: {number}}}, steps: [{{step: {{id: a, type: noop,"
                f" retry_policy: {{backoff: {{base: {number}, cap: {number}}}}}}}}}]}}\n").encode()
        cases.append(_run(f"yaml-number-{number}", text, ".yaml"))
    for duration in ("0", "-1", "0s", "-5m", "1e308", "99999999999999999999d", "1h-5m", "5x", "", " ", "1.5.5s"):
        cases.append(_run(f"duration-{duration!r}", _doc(timeout=duration)))
    retries = {"error_retry_limit": 1, "backoff": {"type": "exponential", "base": 1e-9, "exponent": 100, "cap": 0.001}}
    cases.append(_run("steep-backoff", _doc(steps=[{"step": {"id": "a", "type": "sleep", "params": {
        "seconds": 0.001, "outcome": "USER_ERROR"}, "retry_policy": retries}}])))
    return cases


def _documents() -> list[Case]:
    odd = {
        "bom": b"\xef\xbb\xbf" + _doc(),
        "nul-bytes": _doc()[:20] + b"\x00\x00" + _doc()[20:],
        "latin-1": '{"workflow": {"id": "caf\xe9", "steps": []}}'.encode("latin-1"),
        "lone-surrogate": b'{"workflow": {"id": "\\ud800", "steps": [{"step": {"id": "a", "type": "noop"}}]}}',
        "empty": b"",
        "whitespace": b"  \n\t\n",
        "null": b"null",
        "string": b'"workflow"',
        "huge-string-key": ('{"' + "k" * 2_000_000 + '": 1}').encode(),
        "long-string-value": _doc({"s": "x" * 2_000_000}),
        "long-script": _doc(steps=[{"step": {"id": "a", "type": "bash", "params": {"script": "#" * 2_000_000}}}]),
        "many-steps-one-cycle": _doc(steps=[{"step": {"id": f"s{i}", "type": "noop", "transition": {
            "successors": [f"s{(i + 1) % 2000}"]}}} for i in range(2000)]),
        "many-keys": json.dumps({"workflow": {"id": "k", **{f"k{i}": i for i in range(50_000)}, "steps": []}}).encode(),
    }
    cases = [_validate(f"document-{name}", text) for name, text in odd.items()]
    yamls = {
        "two-documents": b"workflow: {id: a}\n---\nworkflow: {id: b}\n",
        "python-tag": b"workflow: !!python/object/apply:os.system ['true']\n",
        "binary": b"workflow: {id: b, params: {x: !!binary aGVsbG8=}, steps: [{step: {id: a, type: noop}}]}\n",
        "set": b"workflow: {id: b, params: {x: !!set {a, b}}, steps: [{step: {id: a, type: noop}}]}\n",
        "timestamp": b"workflow: {id: b, params: {x: !!timestamp 2001-12-14}, steps: [{step: {id: a, type: noop}}]}\n",
        "float-tag": b"workflow: {id: b, params: {x: !!float nan}, steps: [{step: {id: a, type: noop}}]}\n",
        "int-keys": b"workflow: {id: b, 1: 2, steps: [{step: {id: a, type: noop, params: {2: x}}}]}\n",
        "null-key": b"workflow: {id: b, ~: 2, steps: [{step: {id: a, type: noop}}]}\n",
        "bool-step-id": b"workflow: {id: b, steps: [{step: {id: true, type: noop}}]}\n",
        "list-key": b"workflow:\n  ? [a, b]\n  : 1\n  id: b\n  steps: [{step: {id: a, type: noop}}]\n",
        "map-key": b"workflow:\n  id: b\n  params:\n    ? {a: 1}\n    : 1\n  steps: [{step: {id: a, type: noop}}]\n",
        "undefined-alias": b"workflow: *nothing\n",
        "tabs": b"workflow:\n\tid: b\n",
        "bad-utf8": b"workflow: {id: \xff\xfe, steps: []}\n",
    }
    cases += [_run(f"yaml-{name}", text, ".yaml") for name, text in yamls.items()]
    fifo = Case("validate-a-fifo", ["validate", "{dir}/pipe.json"], {"pipe.json": b"@fifo"})
    cases += [fifo, Case("validate-a-directory", ["validate", "{dir}"]),
              Case("validate-missing", ["validate", "{dir}/nope.json"]),
              Case("validate-dev-null", ["validate", "/dev/null"])]
    return cases


def _options() -> list[Case]:
    ok = _doc({"n": 1, "s": "x", "d": 1.5, "m": {"type": "MAP", "value": {}},
               "a": {"type": "LONG_ARRAY", "value": [1]}, "b": True})
    cases = []
    stores = ["sqlite:///", "sqlite://", "sqlite:///{dir}", "sqlite:///{dir}/wf.json", "sqlite:///:memory:",
              "sqlite:///{dir}/no/such/dir/../x.db", "sqlite:////proc/version", "sqlite:///{dir}/s.db?busy_timeout=abc",
              "sqlite:///{dir}/s.db?busy_timeout=-1", "sqlite:///{dir}/s.db?busy_timeout=nan",
              "sqlite:///{dir}/s.db?busy_timeout=inf", "sqlite:///{dir}/s.db?busy_timeout=1e400",
              "sqlite:///{dir}/s.db?busy_timeout=", "sqlite:///{dir}/s.db?synchronous=maybe",
              "sqlite:///{dir}/s.db?busy_timout=3", "sqlite:///{dir}/s.db?busy_timeout=1&busy_timeout=2",
              "sqlite:///{dir}/s.db?%zz", "foo://bar", "", "memory", "memory://", "postgresql://127.0.0.1:1/x",
              "sqlite:///{dir}/\x00.db", "sqlite:///{dir}/" + "x" * 5000 + ".db"]
    for store in stores:
        for command in (["run", "{dir}/wf.json"], ["status"], ["list"], ["logs", "nope"], ["resume"]):
            workspace = ["--workspace", "{dir}/runs"] if command[0] in ("run", "resume") else []
            cases.append(Case(f"store-{store[:40]!r}-{command[0]}", [*command, "--store", store, *workspace],
                              {"wf.json": ok}))
    cases.append(Case("env-store-bad", ["list"], env={"LEGATO_STORE": "sqlite:///{dir}/s.db?busy_timeout=zz"}))
    for ttl in ("-1", "0", "nan", "inf", "-inf", "abc", "", "1e400", "0.0001", "1e20", " 5 "):
        cases.append(_run(f"lease-ttl-{ttl!r}", ok, env={"LEGATO_LEASE_TTL": ttl}))
    values = ["n=", "n=abc", "n=1e20", "n=" + "9" * 5000, "n=1.5", "n=NaN", "n=[1]", "d=NaN", "d=Infinity", "d=1e999",
              "d=-1e999", "d=" + "1" * 400, "b=maybe", "s=" + "x" * 100_000, "m=" + "[" * 5000 + "]" * 5000,
              "m=" + '{"a":' * 100 + "1" + "}" * 100, "m=" + '{"a":' * 5000 + "1" + "}" * 5000, "m=[]", "m=null",
              "a=[1, NaN]", "a=[" + ",".join(["1"] * 100_000) + "]", "a=" + "[" * 100 + "]" * 100, "nope=1",
              "=1", "noequals", "n=1=2", "s=\udcff", "workflow=1", "m={\"a\": " + "9" * 5000 + "}"]
    for value in values:
        cases.append(_run(f"param-{value[:30]!r}", ok, ".json", "-p", value))
    bash = _doc(steps=[{"step": {"id": "a", "type": "bash", "params": {"script": "true"}}}])
    cases.append(_run("workspace-is-a-file", bash, ".json", "--workspace", "{dir}/wf.json"))
    cases.append(_run("workspace-under-a-file", bash, ".json", "--workspace", "{dir}/wf.json/runs"))
    cases.append(_run("workspace-unwritable", bash, ".json", "--workspace", "/proc/legato-runs"))
    cases.append(_run("request-id-long", ok, ".json", "--request-id", "r" * 100_000))
    cases.append(_run("request-id-empty", ok, ".json", "--request-id", ""))
    cases += [Case("status-odd-id", ["status", "'; drop table x; --", "--store", "sqlite:///{dir}/s.db"]),
              Case("logs-negative-attempt", ["logs", "x", "--attempt", "-5", "--store", "sqlite:///{dir}/s.db"]),
              Case("logs-huge-attempt", ["logs", "x", "--attempt", "9" * 30, "--store", "sqlite:///{dir}/s.db"]),
              Case("list-negative-limit", ["list", "--limit", "-1", "--store", "sqlite:///{dir}/s.db"]),
              Case("list-huge-limit", ["list", "--limit", "9" * 30, "--store", "sqlite:///{dir}/s.db"]),
              Case("resume-unknown", ["resume", "nope", "--store", "sqlite:///{dir}/s.db"])]
    return cases


# -- mutations of the examples -----------------------------------------------------------------


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _parent(doc, path):
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


RAW = "@@raw{}@@"


def _raws(kind: str, rng: random.Random, yaml_text: bool):
    """Raw text to splice in (what json.dumps / yaml.safe_dump cannot or will not write)."""
    if kind == "huge-int":
        return rng.choice(["9223372036854775808", "1" + "0" * 30, "9" * 150, "9" * 5000, "-" + "9" * 4400])
    if kind == "nan":
        return ".nan" if yaml_text else "NaN"
    if kind == "inf":
        return rng.choice([".inf", "-.inf", "1e999"] if yaml_text else ["Infinity", "-Infinity", "1e999"])
    if kind == "deep":
        depth = rng.choice([65, 300, 1000, 5000])
        return "[" * depth + "]" * depth
    if kind == "long-string":
        return json.dumps("x" * rng.choice([1_100_000, 3_000_000]))
    raise AssertionError(kind)


KINDS = ["delete", "duplicate", "retype", "huge-int", "nan", "inf", "deep", "long-string", "bad-utf8", "truncate"]


def _mutate(rng: random.Random, example: Path, kind: str) -> bytes:
    """``example`` with one ``kind`` of damage at a random place. What a serialiser will not write
    (NaN, 5,000-digit integers, a key twice) goes in as a placeholder replaced in the text; a key
    given twice is written as JSON, YAML examples included."""
    text = example.read_text(encoding="utf-8")
    is_yaml = example.suffix in (".yaml", ".yml")
    doc = yaml.safe_load(text) if is_yaml else json.loads(text)
    paths = [p for p in _paths(doc) if p]
    path = rng.choice(paths)
    parent, key = _parent(doc, path), path[-1]
    raw = None
    if kind == "delete":
        del parent[key]
    elif kind == "duplicate":
        if isinstance(parent, list):
            parent.insert(key, parent[key])
        else:  # the member twice: first with another value, then with its own
            raw = f"{json.dumps(key)}: 1, {json.dumps(key)}: {json.dumps(parent[key])}"
            parent[key] = RAW.format(0)
    elif kind == "retype":
        parent[key] = rng.choice([None, True, 0, -1, 1.5, "", "x", [], {}, [None], {"": None}, "${", "$${x}", "${x}"])
    elif kind in ("bad-utf8", "truncate"):
        data = text.encode()
        at = rng.randrange(len(data))
        return data[:at] + (rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xe2\x82"]) + data[at:]
                            if kind == "bad-utf8" else b"")
    else:
        parent[key] = RAW.format(0)
        raw = _raws(kind, rng, is_yaml)
    if raw is None:
        return (yaml.safe_dump(doc, sort_keys=False) if is_yaml else json.dumps(doc)).encode()
    if kind == "duplicate":
        out = json.dumps(doc)
        # the member became "key": "@@raw0@@"; replace the whole member by the duplicated pair
        member = json.dumps(key) + ": " + json.dumps(RAW.format(0))
        return out.replace(member, raw, 1).encode()
    out = yaml.safe_dump(doc, sort_keys=False, width=1 << 30) if is_yaml else json.dumps(doc)
    return (out.replace(f"'{RAW.format(0)}'", raw).replace(json.dumps(RAW.format(0)), raw)
            .replace(RAW.format(0), raw)).encode()


def _mutations(seed: int, count: int) -> list[Case]:
    """Every example through every kind in turn; each mutation has its own random stream, so it is
    built only when it runs (some are megabytes) and is the same whatever else runs."""
    cases = []
    for i in range(count):
        example = EXAMPLES[i % len(EXAMPLES)]
        kind = KINDS[(i // len(EXAMPLES)) % len(KINDS)]
        text = (lambda i=i, example=example, kind=kind:
                _mutate(random.Random(f"{seed}:{i}"), example, kind))
        suffix = ".json" if kind == "duplicate" else example.suffix
        name = f"mutate-{example.name}-{kind}-{i}"
        if example.name in RUNNABLE and i % 3 == 0:
            cases.append(_run(name, text, suffix))
        else:
            cases.append(_validate(name, text, suffix))
    return cases


def generate(seed: int = SEED, count: int = CASES) -> list[Case]:
    """The cases, the same for the same seed and count: every fixed one, then example mutations."""
    fixed = _bombs() + _nesting() + _numbers() + _documents() + _options()
    return fixed + _mutations(seed, max(count - len(fixed), 10 * len(EXAMPLES)))


# -- running them ----------------------------------------------------------------------------------


def _materialise(case: Case, where: Path) -> tuple[list[str], dict[str, str]]:
    where.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        data = data() if callable(data) else data
        if data == b"@fifo":
            os.mkfifo(where / name)
        else:
            (where / name).write_bytes(data)
    fill = lambda s: s.replace("{dir}", str(where))  # noqa: E731
    return [fill(a) for a in case.args], {k: fill(v) for k, v in case.env.items()}


def _verdict(code: int, output: str, seconds: float, crashed: str | None = None) -> str | None:
    if crashed:
        return f"uncaught {crashed}"
    if code not in (0, 1, 2):
        return f"exit code {code}"
    if "Traceback" in output:
        return "a traceback"
    if "internal error" in output:
        return "an internal error"
    # A step type broke on the input (a step whose params or edge conditions fail at run time is
    # INTERNALLY_FAILED too, as in Maestro, with a located message: that is the input's fault).
    if "INTERNALLY_FAILED" in output and "a bug in the plugin" in output:
        return "a step type ended INTERNALLY_FAILED"
    if seconds > LIMIT_SECONDS:
        return f"took {seconds:.1f}s"
    return None


def _in_process(args: list[str], env: dict[str, str]) -> tuple[int, str, str | None]:
    from click.testing import CliRunner

    from legato.cli import main

    result = CliRunner().invoke(main, args, env=env)
    crashed = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        crashed = "".join(traceback.format_exception(result.exception))[-2000:]
    return result.exit_code, result.stdout + result.stderr, crashed


def _as_process(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, int]:
    """Run ``legato`` for real; return (exit code, output, peak RSS in KiB of it and its children)."""
    out = open(cwd / "out.txt", "w+b")
    proc = subprocess.Popen([LEGATO, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, start_new_session=True)
    timer = threading.Timer(LIMIT_SECONDS + 5, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    return proc.returncode, out.read().decode("utf-8", "replace"), usage.ru_maxrss


def _exec_able(args: list[str], env: dict[str, str]) -> bool:
    """Whether the OS would take these as argv and environment (no NUL, each under 128 KiB)."""
    return all("\x00" not in a and len(a.encode("utf-8", "surrogateescape")) < 100_000
               for a in [*args, *env.values()])


def _worker() -> None:
    """Run cases ``argv[1]``… in this process, one JSON line each, then this process's peak RSS."""
    import tempfile

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a bomb fails here, not on the machine
    start, seed, count = (int(a) for a in sys.argv[1:4])
    cases = generate(seed, count)
    base = Path(tempfile.mkdtemp(prefix="legato-fuzz-"))
    os.environ["LEGATO_STORE"] = f"sqlite:///{base}/default.db"
    os.chdir(base)
    for i in range(start, len(cases)):
        case = cases[i]
        where = base / f"case-{i}"
        args, env = _materialise(case, where)
        began = time.monotonic()
        rss = 0
        if i % SUBPROCESS_EVERY == 0 and _exec_able(args, env):
            code, output, rss = _as_process(args, env, where)
            crashed, how = None, "process"
        else:
            code, output, crashed = _in_process(args, env)
            how = "in-process"
        seconds = time.monotonic() - began
        problem = _verdict(code, output, seconds, crashed)
        print(json.dumps({"i": i, "name": case.name, "how": how, "code": code, "seconds": round(seconds, 3),
                          "rss_kb": rss, "problem": problem, "output": output[-1500:] if problem else ""}),
              flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"done": True, "rss_kb": usage.ru_maxrss}), flush=True)


def _drive(seed: int, count: int) -> tuple[list[dict], int]:
    """Run every case through workers; a hung case is killed with its worker, which restarts after it."""
    total = len(generate(seed, count))
    results: list[dict] = []
    worker_rss = 0
    start = 0
    while start < total:
        proc = subprocess.Popen([sys.executable, "-c", "from tests.test_malformed_inputs import _worker; _worker()",
                                 str(start), str(seed), str(count)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=LIMIT_SECONDS + 20)
            except queue.Empty:
                line = b"hang"
            if line is None or line == b"hang":
                if line == b"hang":
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                nxt = results[-1]["i"] + 1 if results else start
                if nxt < total:
                    results.append({"i": nxt, "name": generate(seed, count)[nxt].name, "how": "in-process",
                                    "code": None, "seconds": LIMIT_SECONDS + 20, "rss_kb": 0,
                                    "problem": "hung (killed)" if line == b"hang" else
                                    f"the worker died (exit {proc.returncode})", "output": ""})
                    start = nxt + 1
                else:
                    start = total
                break
            record = json.loads(line)
            if record.get("done"):
                worker_rss = max(worker_rss, record["rss_kb"])
                proc.wait()
                start = total
                break
            results.append(record)
    return results, worker_rss


def test_generator_is_deterministic_and_covers_every_kind():
    first, again = generate(SEED, 300), generate(SEED, 300)

    def built(case: Case):
        return case.name, case.args, case.env, {k: v() if callable(v) else v for k, v in case.files.items()}

    assert [built(c) for c in first[-40:]] == [built(c) for c in again[-40:]]
    assert [c.name for c in first] == [c.name for c in again]
    assert len(first) >= 300
    names = " ".join(c.name for c in first)
    for kind in KINDS:
        for example in EXAMPLES:
            assert f"mutate-{example.name}-{kind}-" in names, (example.name, kind)
    for needle in ("yaml-billion-laughs", "interpolation-doubling", "cel-doubling", "json-nesting-1000",
                   "integer-4301-digits", "busy_timeout", "lease-ttl", "param-", "workspace-is-a-file",
                   "document-latin-1", "bad-utf8", "yaml-bad-utf8"):
        assert needle in names, needle


def test_malformed_inputs_never_crash_hang_or_balloon(capsys):
    began = time.monotonic()
    results, worker_rss = _drive(SEED, CASES)
    elapsed = time.monotonic() - began
    by_code: dict = {}
    for r in results:
        by_code[r["code"]] = by_code.get(r["code"], 0) + 1
    peak_kb = max([worker_rss] + [r["rss_kb"] for r in results])
    slowest = max(results, key=lambda r: r["seconds"])
    bad = [r for r in results if r["problem"]]
    with capsys.disabled():
        print(f"\nmalformed inputs: {len(results)} cases (seed {SEED}; "
              f"{sum(r['how'] == 'process' for r in results)} as processes), exit codes "
              + ", ".join(f"{k}: {v}" for k, v in sorted(by_code.items(), key=lambda kv: str(kv[0])))
              + f"; max {slowest['seconds']:.2f}s ({slowest['name']}); peak RSS {peak_kb / 1024:.0f} MB; "
              f"{elapsed:.0f}s in all")
    assert not bad, "\n\n".join(f"#{r['i']} {r['name']} ({r['how']}): {r['problem']}\n{r['output']}" for r in bad[:10])
    assert len(results) == len(generate(SEED, CASES))
    assert peak_kb < LIMIT_RSS_MB * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
