"""Unit tests for typed params (``legato.params``) and the bounded CEL layer (``legato.cel``)."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys
import textwrap
import time

import pytest

from legato.cel import MAX_DEPTH, MAX_LIST, MAX_SOURCE, CelCompiler, CelError, to_cel, to_python
from legato.params import (
    ParamError,
    ParamMode,
    ParamType,
    coerce,
    evaluate_params,
    infer_type,
    interpolate,
    interpolation_names,
    parse_override,
    parse_param,
)

T = ParamType


@pytest.fixture(scope="module")
def compiler() -> CelCompiler:
    return CelCompiler()


def specs(**raw):
    return {name: parse_param(name, value) for name, value in raw.items()}


def evaluate(compiler, source: str, **activation):
    return compiler.compile(source).evaluate({k: to_cel(v) for k, v in activation.items()})


# -- type inference for bare literals ---------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (True, T.BOOLEAN),
    (False, T.BOOLEAN),
    (0, T.LONG),
    (-7, T.LONG),
    (1.5, T.DOUBLE),
    (1.0, T.DOUBLE),
    ("x", T.STRING),
    ("", T.STRING),
    ([1, 2], T.LONG_ARRAY),
    ([1, 2.5], T.DOUBLE_ARRAY),
    ([2.5], T.DOUBLE_ARRAY),
    ([True, False], T.BOOLEAN_ARRAY),
    (["a", "b"], T.STRING_ARRAY),
    ([], T.STRING_ARRAY),
    ([1, "a"], T.ARRAY),
    ([{"a": 1}], T.ARRAY),
    ({"a": "b"}, T.STRING_MAP),
    ({"a": 1}, T.MAP),
    ({}, T.MAP),
])
def test_infer_type(value, expected):
    assert infer_type(value) is expected
    spec = parse_param("p", value)
    assert spec.type is expected and spec.has_value and spec.expression is None


def test_booleans_in_arrays_are_not_longs():
    assert infer_type([True, 1]) is T.ARRAY


def test_null_is_not_a_param_value():
    with pytest.raises(ParamError, match="null is not a param value"):
        infer_type(None)
    with pytest.raises(ParamError, match="null"):
        parse_param("p", [1, None])


def test_parse_param_full_form():
    spec = parse_param("d", {"type": "LONG", "value": 3.0, "mode": "CONSTANT", "validator": "value > 0"})
    assert (spec.type, spec.value, spec.mode, spec.validator) == (T.LONG, 3, ParamMode.CONSTANT, "value > 0")
    assert type(spec.value) is int
    spec = parse_param("e", {"type": "STRING", "expression": "'x'"})
    assert spec.expression == "'x'" and not spec.has_value and spec.mode is ParamMode.MUTABLE
    assert parse_param("s", "a ${b}").interpolated
    assert parse_param("s", "a $${b}").interpolated  # `$$` still has to be unescaped
    assert not parse_param("s", "a $b").interpolated


@pytest.mark.parametrize("name, raw, pointer, message", [
    ("1x", 1, "", "is not an identifier"),
    ("a-b", 1, "", "is not an identifier"),
    ("steps", 1, "", "is reserved"),
    ("params", 1, "", "is reserved"),
    ("workflow", 1, "", "is reserved"),
    ("x", {"type": "INT", "value": 1}, "/type", "unknown param type 'INT'"),
    ("x", {"type": "LONG", "value": 1, "mode": "RW"}, "/mode", "unknown param mode 'RW'"),
    ("x", {"type": "LONG", "value": "abc"}, "/value", "expected a LONG, got string 'abc'"),
    ("x", {"type": "LONG", "value": 1, "expression": "2"}, "", "not both"),
    ("x", {"value": 1}, "/type", "needs a `type`"),
    ("x", {"type": "LONG"}, "", "needs a `value` or an `expression`"),
    ("x", {"type": "LONG", "expression": 3}, "/expression", "must be a CEL expression string"),
    ("x", {"type": "LONG", "value": 1, "validator": True}, "/validator", "must be a CEL expression string"),
])
def test_parse_param_errors(name, raw, pointer, message):
    with pytest.raises(ParamError) as info:
        parse_param(name, raw)
    assert info.value.pointer == pointer
    assert message in info.value.message


# -- coerce -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ptype, value, expected", [
    (T.LONG, 3, 3),
    (T.LONG, 3.0, 3),
    (T.LONG, -2.0, -2),
    (T.DOUBLE, 3, 3.0),
    (T.DOUBLE, 2.5, 2.5),
    (T.STRING, "", ""),
    (T.BOOLEAN, False, False),
    (T.STRING_MAP, {"a": "b"}, {"a": "b"}),
    (T.STRING_MAP, {}, {}),
    (T.MAP, {"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}),
    (T.LONG_ARRAY, [1, 2.0], [1, 2]),
    (T.DOUBLE_ARRAY, [1, 2.5], [1.0, 2.5]),
    (T.STRING_ARRAY, [], []),
    (T.BOOLEAN_ARRAY, [True], [True]),
    (T.ARRAY, [1, "a", {"b": 2}], [1, "a", {"b": 2}]),
])
def test_coerce_accepts(ptype, value, expected):
    out = coerce(ptype, value)
    assert out == expected
    assert type(out) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in out] == [type(v) for v in expected]


@pytest.mark.parametrize("ptype, value", [
    (T.LONG, True),
    (T.LONG, False),
    (T.LONG, 3.5),
    (T.LONG, "3"),
    (T.LONG, math.inf),
    (T.LONG, math.nan),
    (T.LONG, None),
    (T.DOUBLE, True),
    (T.DOUBLE, "3.0"),
    (T.BOOLEAN, 1),
    (T.BOOLEAN, "true"),
    (T.STRING, 1),
    (T.STRING, None),
    (T.STRING_MAP, {"a": 1}),
    (T.STRING_MAP, ["a"]),
    (T.MAP, [1]),
    (T.LONG_ARRAY, 1),
    (T.STRING_ARRAY, "abc"),
    (T.ARRAY, {"a": 1}),
])
def test_coerce_rejects(ptype, value):
    with pytest.raises(ParamError, match=f"expected a {ptype.value}"):
        coerce(ptype, value)


@pytest.mark.parametrize("ptype, value, message", [
    (T.LONG_ARRAY, [1, "x"], "element 1: expected a LONG, got string 'x'"),
    (T.LONG_ARRAY, [1, 2, True], "element 2: expected a LONG, got boolean True"),
    (T.DOUBLE_ARRAY, [1.5, None], "element 1: expected a DOUBLE"),
    (T.STRING_ARRAY, ["a", 1], "element 1: expected a STRING, got integer 1"),
    (T.BOOLEAN_ARRAY, [True, 0], "element 1: expected a BOOLEAN"),
])
def test_coerce_array_element_errors(ptype, value, message):
    with pytest.raises(ParamError) as info:
        coerce(ptype, value)
    assert message in info.value.message


# -- parse_override ---------------------------------------------------------------------------


@pytest.mark.parametrize("declared, text, expected", [
    ("a", "42", "42"),
    ("a", " spaced ", " spaced "),
    ("a", "", ""),
    (True, "true", True),
    (True, "FALSE", False),
    (1, "42", 42),
    (1, "4.0", 4),
    (1, "-3", -3),
    (1.5, "3", 3.0),
    ([1], "[1, 2]", [1, 2]),
    (["a"], '["x", "y"]', ["x", "y"]),
    ({"a": "b"}, '{"k": "v"}', {"k": "v"}),
    ({"a": 1}, '{"k": [1]}', {"k": [1]}),
])
def test_parse_override(declared, text, expected):
    out = parse_override(parse_param("p", declared), text)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("declared, text, message", [
    (1, "abc", "is not a LONG"),
    (1, "true", "expected a LONG"),
    (1, "4.5", "expected a LONG"),
    (True, "yes", "is not a BOOLEAN"),
    (1.5, '"3"', "expected a DOUBLE"),
    ([1], '[1, "x"]', "element 1"),
    ({"a": "b"}, '{"k": 1}', "expected a STRING_MAP"),
])
def test_parse_override_rejects(declared, text, message):
    with pytest.raises(ParamError) as info:
        parse_override(parse_param("p", declared), text)
    assert message in info.value.message


# -- ${} interpolation ------------------------------------------------------------------------


def lookup_in(values: dict):
    calls = []

    def lookup(path: str):
        calls.append(path)
        node = values
        for part in path.split("."):
            node = node[part]
        return node

    lookup.calls = calls
    return lookup


def test_interpolate_names_and_escapes():
    lookup = lookup_in({"a": "A", "n": 3, "t": True, "f": False, "x": 2.5})
    assert interpolate("${a}-${n}-${t}-${f}-${x}", lookup) == "A-3-true-false-2.5"
    assert interpolate("cost: $$5 for ${ a }", lookup) == "cost: $5 for A"
    assert interpolate("$${a} stays", lookup) == "${a} stays"
    assert interpolate("$$$${a}", lookup) == "$${a}"
    assert interpolate("$a and $ alone", lookup) == "$a and $ alone"
    assert interpolate("no dollars", lookup) == "no dollars"
    assert lookup.calls == ["a", "n", "t", "f", "x", "a"]


def test_interpolate_dotted_paths_and_structured_values():
    lookup = lookup_in({"w": {"id": "wf", "tags": ["a", "b"], "meta": {"k": 1}}})
    assert interpolate("${w.id}", lookup) == "wf"
    assert interpolate("${w.tags}|${w.meta}", lookup) == '["a","b"]|{"k":1}'
    assert lookup.calls[0] == "w.id"


def test_interpolate_inside_lists_and_maps():
    lookup = lookup_in({"a": "A", "b": 2})
    value = {"k": ["${a}", 1, None, {"deep": "x${b}y"}], "n": 5, "s": "$$"}
    assert interpolate(value, lookup) == {"k": ["A", 1, None, {"deep": "x2y"}], "n": 5, "s": "$"}
    assert interpolate(7, lookup) == 7


def test_interpolate_unknown_name_raises_key_error():
    with pytest.raises(KeyError):
        interpolate("${nosuch}", lookup_in({}))
    with pytest.raises(KeyError):
        interpolate(["ok", "${a.nosuch}"], lookup_in({"a": {}}))


def test_interpolation_names():
    assert interpolation_names("${a} ${ b.c } $$ $${d}") == ["a", "b.c"]
    assert interpolation_names({"k": ["${x}", 3], "j": "${params.y}"}) == ["x", "params.y"]
    assert interpolation_names("${steps.my-step.outputs}") == ["steps.my-step.outputs"]
    for bad in ("${a b}", "${}", "${1a}", "${a..b}", "${a.}"):
        with pytest.raises(ParamError, match="is not a name or a dotted path"):
            interpolation_names(bad)


# -- evaluate_params --------------------------------------------------------------------------


def test_evaluate_params_in_declaration_order(compiler):
    out = evaluate_params(specs(
        a=1,
        b={"type": "LONG", "expression": "a + 1"},
        c={"type": "LONG", "expression": "params.b * 10 + params.a"},
        d="${a}/${b}/${params.c}",
    ), compiler)
    assert out == {"a": 1, "b": 2, "c": 21, "d": "1/2/21"}
    assert list(out) == ["a", "b", "c", "d"]


def test_evaluate_params_cannot_see_later_params(compiler):
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(b={"type": "LONG", "expression": "a + 1"}, a=1), compiler)
    assert info.value.pointer == "/b/expression"
    assert "a" in info.value.message
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(s="${later}", later=1), compiler)
    assert info.value.pointer == "/s"


def test_evaluate_params_scope_and_context(compiler):
    out = evaluate_params(
        specs(x={"type": "LONG", "expression": "w + 1"},
              y={"type": "STRING", "expression": "workflow.id + '-' + string(params.w)"},
              z="${workflow.id}:${w}"),
        compiler,
        scope={"w": 41},
        context={"workflow": to_cel({"id": "wf"})},
    )
    assert out == {"x": 42, "y": "wf-41", "z": "wf:41"}  # the scope is visible, not returned


def test_evaluate_params_coerces_results(compiler):
    out = evaluate_params(specs(d={"type": "DOUBLE", "expression": "1"}, l={"type": "LONG", "expression": "4.0"}),
                          compiler)
    assert out == {"d": 1.0, "l": 4} and type(out["d"]) is float and type(out["l"]) is int
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(x={"type": "LONG", "expression": "'abc'"}), compiler)
    assert info.value.pointer == "/x" and "expected a LONG" in info.value.message
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(x={"type": "LONG", "expression": "null"}), compiler)
    assert info.value.pointer == "/x/expression" and "null" in info.value.message


def test_evaluate_params_expression_error_is_located(compiler):
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(x={"type": "LONG", "expression": "1 / 0"}), compiler)
    assert info.value.pointer == "/x/expression"
    assert info.value.message.startswith("CEL ")


def test_evaluate_params_validator(compiler):
    declared = specs(lo=0, x={"type": "LONG", "value": -1, "validator": "value >= lo"})
    with pytest.raises(ParamError) as info:
        evaluate_params(declared, compiler)
    assert info.value.pointer == "/x/validator"
    assert "fails its validator `value >= lo`" in info.value.message
    assert evaluate_params(declared, compiler, overrides={"x": 5}) == {"lo": 0, "x": 5}
    with pytest.raises(ParamError) as info:  # a validator that is not boolean is a failure, not a pass
        evaluate_params(specs(x={"type": "LONG", "value": 1, "validator": "value"}), compiler)
    assert info.value.pointer == "/x/validator"
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(x={"type": "LONG", "value": 1, "validator": "nosuch > 0"}), compiler)
    assert info.value.pointer == "/x/validator" and info.value.message.startswith("CEL ")


def test_evaluate_params_override_replaces_value(compiler):
    declared = specs(a=1, b={"type": "LONG", "expression": "1 / 0"}, c={"type": "LONG", "expression": "a + b"},
                     s="${a}")
    out = evaluate_params(declared, compiler, overrides={"a": 10, "b": 5, "s": "plain ${x}"})
    assert out == {"a": 10, "b": 5, "c": 15, "s": "plain ${x}"}  # an override is a value, not a template
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(a=1), compiler, overrides={"a": "ten"})
    assert info.value.pointer == "/a"


def test_evaluate_params_raw_names_are_not_interpolated(compiler):
    out = evaluate_params(specs(a="A", script="echo ${a} $$HOME", label="${a}"), compiler,
                          raw=frozenset({"script"}))
    assert out == {"a": "A", "script": "echo ${a} $$HOME", "label": "A"}


# -- CEL: compiling ---------------------------------------------------------------------------


def test_compile_cache_returns_the_same_program(compiler):
    first = compiler.compile("1 + 2 * 3")
    assert compiler.compile("1 + 2 * 3") is first
    assert compiler.compile("1 + 2 * 4") is not first
    assert first.source == "1 + 2 * 3"
    assert first.evaluate({}) == 7


def test_syntax_error_has_line_and_column(compiler):
    with pytest.raises(CelError) as info:
        compiler.compile("1 +* 2")
    assert (info.value.line, info.value.column) == (1, 4)
    assert info.value.located().startswith("1:4: syntax error")
    with pytest.raises(CelError) as info:
        compiler.compile("a &&\n  )")
    assert (info.value.line, info.value.column) == (2, 3)
    assert info.value.located().startswith("2:3: ")


@pytest.mark.parametrize("source", ["", "   ", "'unterminated", "a ? b", "[1, 2", "{1:}", "`", "\x00", "a.b("])
def test_bad_sources_are_cel_errors(compiler, source):
    with pytest.raises(CelError):
        compiler.compile(source)


def test_source_bounds(compiler):
    with pytest.raises(CelError) as info:
        compiler.compile("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    assert f"nests deeper than {MAX_DEPTH} levels" in info.value.message
    assert (info.value.line, info.value.column) == (1, MAX_DEPTH + 1)
    assert compiler.compile("'" + "(" * 100 + "'").evaluate({}) == "(" * 100  # brackets in strings don't nest
    with pytest.raises(CelError, match="the limit is"):
        compiler.compile("'" + "a" * MAX_SOURCE + "'")
    for deep in ("-" * 500 + "1", "!" * 3000 + "true", "+".join(["1"] * 300), "size(" * 40 + "[]" + ")" * 40):
        with pytest.raises(CelError, match="too deeply nested"):
            compiler.compile(deep)


# -- CEL: evaluating --------------------------------------------------------------------------


@pytest.mark.parametrize("source, activation", [
    ("1 / 0", {}),
    ("nosuch + 1", {}),
    ("'a' + 1", {}),
    ("[1, 2][5]", {}),
    ("{'a': 1}.b", {}),
    ("x.y", {"x": 1}),
    ("int('abc')", {}),
    ("nofunction(1)", {}),
    ("dateIntsBetween(20250230, 20250301)", {}),
    ("intsBetween(0, 5, 0)", {}),
])
def test_evaluation_errors_are_cel_errors(compiler, source, activation):
    program = compiler.compile(source)
    with pytest.raises(CelError) as info:
        program.evaluate({k: to_cel(v) for k, v in activation.items()})
    assert type(info.value) is CelError
    assert info.value.message


def test_type_error_message_is_for_people(compiler):
    with pytest.raises(CelError) as info:
        compiler.compile("'a' + 1").evaluate({})
    assert "Token(" not in info.value.message and "<class" not in info.value.message


def test_function_error_names_the_function_once(compiler):
    with pytest.raises(CelError) as info:
        compiler.compile("intsBetween(0, 5, 0)").evaluate({})
    assert info.value.message.count("intsBetween") == 1


def test_evaluation_is_time_bounded(compiler):
    program = compiler.compile(
        "intsBetween(0, 1000).map(x, intsBetween(0, 1000).map(y, intsBetween(0, 1000).map(z, x + y + z)))")
    start = time.monotonic()
    with pytest.raises(CelError, match="took longer than"):
        program.evaluate({})
    # a hang guard: MAX_EVAL_SECONDS is 0.5 and the whole product would take hours
    assert time.monotonic() - start < 10, "the evaluation deadline did not stop the expression"
    assert compiler.compile("1 + 1").evaluate({}) == 2  # the next evaluation gets a fresh deadline


def test_activation_names(compiler):
    assert evaluate(compiler, "x + params.x", x=2, params={"x": 40}) == 42
    assert evaluate(compiler, "steps.a.outputs.rows > 3", steps={"a": {"outputs": {"rows": 5}}}) is True
    assert evaluate(compiler, "'b' in m && m.b == 2", m={"b": 2}) is True


def test_to_cel_to_python_round_trip(compiler):
    value = {"a": [1, 2.5, True, "s", {"b": None}], "e": [], "m": {}}
    assert to_python(to_cel(value)) == value
    assert evaluate(compiler, "v", v=value) == value
    moment = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
    assert evaluate(compiler, "t", t=moment) == "2025-03-01T12:00:00Z"
    assert evaluate(compiler, "t + duration('1h')", t=moment) == "2025-03-01T13:00:00Z"
    assert evaluate(compiler, "duration('90s')") == 90.0


@pytest.mark.parametrize("source, expected", [
    ("intsBetween(0, 5)", [0, 1, 2, 3, 4]),
    ("intsBetween(0, 10, 3)", [0, 3, 6, 9]),
    ("intsBetween(5, 0, -2)", [5, 3, 1]),
    ("intsBetween(3, 3)", []),
    ("intsBetween(5, 0)", []),
    ("size(intsBetween(0, 1000))", 1000),
    ("dateIntsBetween(20240227, 20240302)", [20240227, 20240228, 20240229, 20240301]),  # leap year
    ("dateIntsBetween(20230227, 20230302)", [20230227, 20230228, 20230301]),
    ("dateIntsBetween(20250130, 20250202)", [20250130, 20250131, 20250201]),  # month boundary
    ("dateIntsBetween(20241230, 20250102)", [20241230, 20241231, 20250101]),  # year boundary
    ("dateIntsBetween(20000227, 20000301)", [20000227, 20000228, 20000229]),  # 2000 is a leap year
    ("dateIntsBetween(21000227, 21000302)", [21000227, 21000228, 21000301]),  # 2100 is not
    ("dateIntsBetween(20250101, 20250110, 3)", [20250101, 20250104, 20250107]),
    ("dateIntsBetween(20250105, 20250101)", []),
    ("tsToDateInt(dateIntToTs(20240229))", 20240229),
    ("tsToDateInt(dateIntToTs(20240229) + duration('24h'))", 20240301),
])
def test_legato_functions(compiler, source, expected):
    assert evaluate(compiler, source) == expected


def test_ts_to_date_int_in_a_time_zone(compiler):
    late = datetime.datetime(2025, 1, 1, 23, 30, tzinfo=datetime.timezone.utc)
    assert evaluate(compiler, "tsToDateInt(t)", t=late) == 20250101
    assert evaluate(compiler, "tsToDateInt(t, 'Asia/Tokyo')", t=late) == 20250102
    with pytest.raises(CelError):
        evaluate(compiler, "tsToDateInt(t, 'Mars/Olympus')", t=late)


def test_list_size_bound(compiler):
    with pytest.raises(CelError, match=f"the limit is {MAX_LIST}"):
        evaluate(compiler, f"intsBetween(0, {MAX_LIST * 2})")
    with pytest.raises(CelError, match=f"the limit is {MAX_LIST}"):
        evaluate(compiler, f"intsBetween({MAX_LIST * 2}, 0, -1)")
    with pytest.raises(CelError, match=f"the limit is {MAX_LIST}"):
        evaluate(compiler, "dateIntsBetween(19000101, 22000101)")  # ~109,500 days


def test_plugin_functions_are_callable(compiler):
    custom = CelCompiler({"double": lambda x: x * 2})
    assert custom.compile("double(21)").evaluate({}) == 42
    assert custom.compile("intsBetween(0, 2)").evaluate({}) == [0, 1]  # the built-ins stay


# -- CEL never changes process-wide state -------------------------------------------------------


def test_recursion_limit_is_unchanged_in_a_fresh_interpreter():
    script = textwrap.dedent("""
        import sys
        sys.setrecursionlimit(1234)
        from legato.cel import CelCompiler, CelError
        assert "celpy" not in sys.modules, "legato.cel must import cel-python lazily"
        compiler = CelCompiler()
        assert compiler.compile("intsBetween(0, 3).map(x, x * 2)").evaluate({}) == [0, 2, 4]
        for bad in ("1 +* 2", "1 / 0", "(" * 60 + "1" + ")" * 60):
            try:
                compiler.compile(bad).evaluate({})
            except CelError:
                pass
        CelCompiler().compile("size([1, 2])").evaluate({})
        assert "celpy" in sys.modules
        print(sys.getrecursionlimit())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1234"


# -- bounds on what params can compute (legato.limits) -------------------------------------------


def test_interpolation_doubling_stops_at_the_value_limit(compiler):
    from legato.limits import MAX_VALUE_BYTES

    raw = {"s0": "xy"} | {f"s{i}": f"${{s{i - 1}}}${{s{i - 1}}}" for i in range(1, 31)}
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(**raw), compiler)
    assert info.value.pointer == "/s20"  # 2 * 2**20 characters: the first past 1 MiB
    assert f"more than {MAX_VALUE_BYTES} characters (MAX_VALUE_BYTES)" in info.value.message


def test_one_string_with_many_references_is_refused_before_it_is_built(compiler):
    raw = {"s": "x" * 4096, "t": "${s}" * 200_000}  # would be 800 MB
    with pytest.raises(ParamError, match="MAX_VALUE_BYTES") as info:
        evaluate_params(specs(**raw), compiler)
    assert info.value.pointer == "/t"


def test_cel_concatenation_is_bounded(compiler):
    raw = {"s0": "xy"} | {f"s{i}": {"type": "STRING", "expression": f"s{i - 1} + s{i - 1}"} for i in range(1, 31)}
    with pytest.raises(ParamError, match="`\\+` would build a value of 2097152") as info:
        evaluate_params(specs(**raw), compiler)
    assert info.value.pointer == "/s20/expression"


def test_a_cel_result_of_many_references_to_one_long_string_is_bounded(compiler):
    with pytest.raises(CelError, match="the result is larger than"):
        evaluate(compiler, "[s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s]", s="x" * 65536 * 2)


def test_values_one_instance_computes_are_bounded_in_all(compiler):
    from legato.limits import MAX_INSTANCE_VALUE_BYTES
    from legato.params import ValueBudget

    budget = ValueBudget()
    raw = {"s": "x" * 60_000} | {f"p{i}": {"type": "STRING", "expression": "s + s + s + s + s + s + s + s + s + s"}
                                  for i in range(40)}  # 600,000 characters each: 24 MB in all
    with pytest.raises(ParamError, match="MAX_INSTANCE_VALUE_BYTES") as info:
        evaluate_params(specs(**raw), compiler, budget=budget)
    assert info.value.pointer == f"/p{MAX_INSTANCE_VALUE_BYTES // 600_000}"


def test_a_chain_of_list_params_is_converted_once_each(compiler, monkeypatch):
    import legato.cel

    converted = []
    real = legato.cel.to_cel

    def counting(value):
        if isinstance(value, list):
            converted.append(len(value))
        return real(value)

    monkeypatch.setattr(legato.cel, "to_cel", counting)
    raw = {"l0": [1, 2]} | {f"l{i}": {"type": "LONG_ARRAY", "expression": f"l{i - 1} + l{i - 1}"} for i in range(1, 17)}
    values = evaluate_params(specs(**raw), compiler)
    assert len(values["l16"]) == 2 ** 17
    # Each value once (it was quadratic: every expression converted every earlier list again).
    assert sorted(converted) == [2 ** i for i in range(1, 17)]


def test_doubles_are_finite(compiler):
    with pytest.raises(ParamError, match="expected a finite DOUBLE"):
        coerce(T.DOUBLE, float("nan"))
    with pytest.raises(ParamError, match="expected a finite DOUBLE"):
        coerce(T.DOUBLE_ARRAY, [1.0, float("inf")])
    with pytest.raises(ParamError, match="an integer of 401 digits is too large for a DOUBLE"):
        coerce(T.DOUBLE, 10 ** 400)


# -- Maestro's definitions and merge helpers ------------------------------------------------------


@pytest.mark.parametrize("a, b, near", [
    ("threshold", "threshhold", True), ("threshold", "treshold", True), ("threshold", "thresohld", True),
    ("threshold", "THRESHOLD", True), ("threshold", "threshole", True), ("threshold", "thresh", False),
    ("abc", "abd", True), ("ab", "ac", False), ("x", "y", False), ("run_date", "run_dates", True),
    ("alpha", "beta", False),
])
def test_one_edit(a, b, near):
    """What counts as a near miss of a declared name (a start param refused with a did-you-mean)."""
    from legato.params import _one_edit

    assert _one_edit(a, b) is near and _one_edit(b, a) is near


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("-2.5", -2.5), ("true", True), ("[1, 2]", [1, 2]), ('{"k": "v"}', {"k": "v"}),
    ("hello", "hello"), ("007", "007"), ("null", "null"), ("NaN", "NaN"), ('"quoted"', '"quoted"'), ("", ""),
])
def test_an_added_start_param_is_typed_from_its_text(text, value):
    """ParamHelper.deriveTypedParameter types a value from what it is; `-p` text that is JSON
    (not null, not a JSON string) is that value, else the text itself."""
    from legato.params import _typed_text

    assert _typed_text(text) == value and type(_typed_text(text)) is type(value)


def test_a_full_form_with_tags_is_a_definition_not_a_map():
    """AbstractParamDefinition: `tags` is a field of the definition."""
    spec = parse_param("x", {"type": "STRING", "value": "a", "tags": ["t"], "description": "d"})
    assert (spec.type, spec.value, spec.tags) == (T.STRING, "a", ("t",))


def test_nested_map_definitions_keep_their_types_and_modes():
    """MapParamDefinition: each entry is a ParamDefinition; copyWithParentMode makes it at least
    as strict as its MAP."""
    spec = parse_param("m", {"type": "MAP", "mode": "MUTABLE_ON_START", "value": {
        "a": {"type": "LONG", "value": 2.0}, "b": {"type": "STRING", "value": "x", "mode": "CONSTANT"}, "c": [1]}})
    entries = dict(spec.entries)
    assert spec.value == {"a": 2, "b": "x", "c": [1]} and type(spec.value["a"]) is int and spec.is_literal
    assert entries["a"].mode is ParamMode.MUTABLE_ON_START and entries["b"].mode is ParamMode.CONSTANT
    assert entries["c"] is None


def test_evaluate_params_evaluates_nested_expressions(compiler):
    """ParamEvaluator.evaluateWorkflowParam: a literal MAP is evaluated entry by entry."""
    out = evaluate_params(specs(n=2, m={"type": "MAP", "value": {"x": {"type": "LONG", "expression": "n * 3"},
                                                                  "s": {"type": "STRING", "value": "n=${n}"}}}), compiler)
    assert out == {"n": 2, "m": {"x": 6, "s": "n=2"}}


def test_a_nested_validator_is_located(compiler):
    """ParamEvaluator evaluates each nested param as a param, its validator included."""
    with pytest.raises(ParamError) as info:
        evaluate_params(specs(m={"type": "MAP", "value": {"x": {"type": "LONG", "expression": "1",
                                                                 "validator": "value > 5"}}}), compiler)
    assert info.value.pointer == "/m/value/x/validator"
