"""The bounds on the work a definition, a param or an option can demand, in one place.

Each is a plain constant, checked where the input is read, and exceeding one is a located
error for people (a JSON pointer or line:col), never a hang, a traceback or gigabytes of memory.
README.md ("Limits") lists them; raise one here if a real workflow needs more.
"""

from __future__ import annotations

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "MAX_YAML_ALIAS_NODES",
    "MAX_NUMBER_DIGITS",
    "MAX_STRING_BYTES",
    "MAX_VALUE_BYTES",
    "MAX_INSTANCE_VALUE_BYTES",
    "INT_MIN",
    "INT_MAX",
    "MAX_VALUE_DEPTH",
    "MAX_DURATION_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "MAX_BACKOFF_EXPONENT",
    "MAX_RETRY_LIMIT",
    "MAX_CONCURRENCY",
    "DEFAULT_PARALLELISM",
    "DEFAULT_FOREACH_CONCURRENCY",
    "MAX_FOREACH_CONCURRENCY",
    "MAX_LOOP_ITERATIONS",
    "DEFAULT_WHILE_ITERATIONS",
    "MAX_WORKFLOW_DEPTH",
    "MAX_CEL_SOURCE",
    "MAX_CEL_DEPTH",
    "MAX_CEL_TREE_DEPTH",
    "MAX_CEL_EVAL_SECONDS",
    "MAX_CEL_LIST",
    "value_size",
    "nests_deeper",
]

# -- documents (legato.definition) ---------------------------------------------------------------
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024  # a definition file or text; 100,000 steps take ~10 MB
MAX_NESTING = 64  # levels of arrays and objects in a document (or in a `-p` JSON value)
MAX_YAML_ALIAS_NODES = 100_000  # nodes YAML aliases may stand for in all (a "billion laughs" has 10^9)
MAX_NUMBER_DIGITS = 100  # digits of a number literal
MAX_STRING_BYTES = 1024 * 1024  # characters of one string in a document

# -- values computed at run time (legato.params, legato.cel) ---------------------------------------
MAX_VALUE_BYTES = 1024 * 1024  # one evaluated or interpolated param value (see value_size)
MAX_INSTANCE_VALUE_BYTES = 16 * 1024 * 1024  # all the values one instance computes, together
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # CEL's int, and Legato's LONG: a 64-bit signed integer
MAX_VALUE_DEPTH = 100  # nesting of maps and arrays in a value CEL sees (a param's, a step's outputs)

# -- durations and backoff (legato.definition) -----------------------------------------------------
MAX_DURATION_SECONDS = 366 * 86400  # a backoff's base or cap: at most a year
# Maestro's Defaults.DEFAULT_TIME_OUT_LIMIT_IN_MILLIS and Constants.MAX_TIME_OUT_LIMIT_IN_MILLIS:
DEFAULT_TIMEOUT_SECONDS = 10 * 86400  # a step or workflow without `timeout`: 10 days
MAX_TIMEOUT_SECONDS = 120 * 86400  # a step or workflow timeout: at most 120 days
MAX_BACKOFF_EXPONENT = 100.0
MAX_RETRY_LIMIT = 99  # retries of one class for one step (Maestro's Constants.MAX_RETRY_LIMIT)

# -- concurrency (legato.definition) ----------------------------------------------------------------
MAX_CONCURRENCY = 1000  # step_concurrency, workflow_concurrency (Maestro's *_CONCURRENCY_MAX_LIMIT)
# A PARALLEL run strategy without workflow_concurrency runs this many instances at once
# (Maestro's Defaults.DEFAULT_PARALLELISM); every other rule runs one.
DEFAULT_PARALLELISM = 20

# -- foreach, while, subworkflow (legato.loopdef) ---------------------------------------------------
# A foreach without `concurrency` runs this many iterations at once: Maestro's
# Defaults.DEFAULT_STEP_CONCURRENCY, what ForeachStepRuntime.getConcurrency comes to when the
# workflow sets no step concurrency (when it sets one, that caps every foreach, as in Maestro).
DEFAULT_FOREACH_CONCURRENCY = 20
MAX_FOREACH_CONCURRENCY = 500  # a foreach's `concurrency` (Maestro's Constants.FOREACH_CONCURRENCY_MAX_LIMIT)
# Iterations of one foreach (the product of its loop arrays' lengths) or one while. Maestro's
# Constants.ITERATION_LIMIT is 25,000; Legato stores iterations as rows created as concurrency
# allows, and runs 100,000-iteration loops (benchmarks/), so the bound is Maestro's
# TOTAL_LEAF_STEP_COUNT_LIMIT instead.
MAX_LOOP_ITERATIONS = 1_000_000
DEFAULT_WHILE_ITERATIONS = 25_000  # a while without `max_iterations` (Maestro's Constants.ITERATION_LIMIT)
# Levels of workflows: the top one, each loop's body and each subworkflow below it, at most this
# many in all (Maestro's Constants.WORKFLOW_DEPTH_LIMIT): inline loops nest at most 9 deep.
MAX_WORKFLOW_DEPTH = 10

# -- CEL expressions (legato.cel) ------------------------------------------------------------------
MAX_CEL_SOURCE = 8192  # characters
MAX_CEL_DEPTH = 48  # nesting of brackets / parentheses / braces in the source, checked before parsing
MAX_CEL_TREE_DEPTH = 120  # depth of the parse tree (about 12 nested parentheses, or 60 chained `+`),
# which keeps cel-python's recursive evaluator far from the interpreter's recursion limit
MAX_CEL_EVAL_SECONDS = 0.5
MAX_CEL_LIST = 100_000  # elements a Legato CEL function may build


def value_size(value) -> int:
    """The size a value counts for against MAX_VALUE_BYTES: characters of its strings (keys
    included) plus one per number, boolean and container element; about its compact JSON size."""
    if isinstance(value, str):
        return len(value)
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            size += 1 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            size += 1 + len(item)
            stack.extend(item)
        else:
            size += 1
    return size


def nests_deeper(value, levels: int = MAX_NESTING) -> bool:
    """Whether arrays and maps inside ``value`` nest deeper than ``levels`` (without recursing)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= levels:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
