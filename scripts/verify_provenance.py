#!/usr/bin/env python3
"""Re-verify the provenance of a GreenLang Orchestrator execution from the REST API output.

Usage:
  verify_provenance.py EXECUTION_ID [--base URL]
  verify_provenance.py --file provenance.json --execution-file execution.json
  verify_provenance.py --self-test

Every hash is recomputed here, independently of the server; the rules are in docs/provenance.md.
Exit code: 0 everything verifies, 1 something is broken, 2 usage or network error.
Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_BASE = "http://127.0.0.1:8080/api/v1/orchestrator"


class UsageError(Exception):
    """Bad arguments, unreadable input or a network failure (exit code 2)."""


# ---------------------------------------------------------------- RFC 8785 (JCS) canonical JSON

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jcs_number(x):
    """A JSON number as ECMAScript Number.prototype.toString prints the IEEE double."""
    if isinstance(x, int):
        if abs(x) < 2**53:
            return str(x)  # exactly representable: the double prints as these digits
        x = float(x)  # JCS numbers are doubles: round first (OverflowError beyond ~1.8e308)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"  # also -0
    sign = "-" if x < 0 else ""
    # repr() gives the shortest digits that round-trip, as ECMAScript requires; only its
    # layout differs, so take the digits and the decimal point position and re-lay them out.
    mantissa, _, exp = repr(abs(x)).partition("e")  # e.g. "1e-07", "123.456", "1.5e+16"
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")  # "0.0001" -> "1": each leading zero moves the point
    n = len(whole) + int(exp or 0) - (len(whole + frac) - len(digits))
    digits = digits.rstrip("0")  # "1.0" -> "1"
    k = len(digits)  # now x = 0.<digits> * 10**n, digits minimal (ECMAScript's s, k, n)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e >= 0 else "e-") + str(abs(e))
    return sign + out


def jcs_string(s):
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append("\\u%04x" % ord(ch))  # other control characters, lower-case hex
        else:
            out.append(ch)  # everything else verbatim, including U+007F and non-ASCII
    out.append('"')
    return "".join(out)


def jcs(value):
    """The RFC 8785 canonical JSON text of a parsed JSON value."""
    if value is None:
        return "null"
    if value is True:  # before int: bool is a subclass of int in Python
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return jcs_number(value)
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        # UTF-16 code units, not code points: U+1F600 (D83D DE00) sorts before U+FB33.
        keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(value[k]) for k in keys) + "}"
    raise TypeError("not a JSON value: %r" % type(value))


def H(value):
    """SHA-256 (lower-case hex) of the canonical JSON of value, as UTF-8."""
    return hashlib.sha256(jcs(value).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- verification

RECORD_FIELDS = ("node_id", "agent_id", "input", "outputs", "input_hash", "output_hash",
                 "parent_hashes", "chain_hash", "attempt_count", "started_at", "completed_at",
                 "duration_ms", "worker_id", "prev_record_hash", "record_hash", "depends_on")


def verify(prov, execution):
    """Prints the report; returns True when everything verifies."""
    missing = [f for f in ("execution_id", "dag_hash", "canonical_order", "nodes") if f not in prov]
    missing += sorted({f for n in prov.get("nodes", []) for f in RECORD_FIELDS if f not in n})
    if missing:
        raise UsageError("the provenance response lacks " + ", ".join(missing)
                         + " (a server without canonical_order/depends_on cannot be fully verified)")
    exec_id = prov["execution_id"]
    order = prov["canonical_order"]
    position = {node_id: i for i, node_id in enumerate(order)}
    print("execution %s\ndag_hash  %s" % (exec_id, prov["dag_hash"]))

    # Parents link to *stored* chain hashes (so a forged node is named alone); the execution hash
    # is rebuilt from *recomputed* ones (so any forgery also breaks it). Same as the server.
    stored_chain, recomputed_chain = {}, {}
    prev = H({"execution_id": exec_id})  # genesis prev_record_hash
    first_broken = None
    for node in prov["nodes"]:  # commit order
        nid, issues = node["node_id"], []
        input_hash, output_hash = H(node["input"]), H(node["outputs"])
        if input_hash != node["input_hash"]:
            issues.append("input_hash does not match the stored input")
        if output_hash != node["output_hash"]:
            issues.append("output_hash does not match the stored outputs")
        if nid not in position:
            issues.append("the node is not in canonical_order (not a node of the pinned DAG)")
        else:
            late = [d for d in node["depends_on"] if position.get(d, len(order)) > position[nid]]
            if late:
                issues.append("canonical_order puts dependencies %s after the node" % late)
        # Completed dependencies are those with a record committed before this one; ids sort
        # by code point (Rust byte order), which for the ASCII id alphabet is plain ASCII order.
        expected = [stored_chain[d] for d in sorted(set(node["depends_on"])) if d in stored_chain]
        if expected != node["parent_hashes"]:
            issues.append("parent_hashes differ from the chain hashes of its completed dependencies")
        chain = H({"node_id": nid, "agent_id": node["agent_id"], "input_hash": input_hash,
                   "output_hash": output_hash, "parent_hashes": node["parent_hashes"]})
        if chain != node["chain_hash"]:
            issues.append("chain_hash does not match its recomputed value")
        if node["prev_record_hash"] != prev:
            issues.append("prev_record_hash does not link to the previous record")
        record = H({"prev_record_hash": prev, "execution_id": exec_id, "node_id": nid,
                    "chain_hash": node["chain_hash"], "attempt_count": node["attempt_count"],
                    "started_at": node["started_at"], "completed_at": node["completed_at"],
                    "duration_ms": node["duration_ms"], "worker_id": node["worker_id"]})
        if record != node["record_hash"]:
            issues.append("record_hash does not match its recomputed value (timing or order altered)")
        # A node re-run after a resume has a later record that supersedes the earlier one
        # (mirrors provenance::verify).
        stored_chain[nid], recomputed_chain[nid] = node["chain_hash"], chain
        prev = node["record_hash"]
        if issues:
            first_broken = first_broken or nid
            print("  %-30s BROKEN: %s" % (nid, "; ".join(issues)))
        else:
            print("  %-30s OK" % nid)

    problems = []
    exec_input_hash = H(execution["input_data"])
    for name, stored in (("provenance input_hash", prov.get("input_hash")),
                         ("execution input_hash", execution.get("input_hash"))):
        if stored != exec_input_hash:
            problems.append("%s %s is not H(execution.input_data) = %s" % (name, stored, exec_input_hash))
    if execution.get("dag_hash", prov["dag_hash"]) != prov["dag_hash"]:
        problems.append("the execution's dag_hash differs from the provenance dag_hash")
    recomputed = H({"dag_hash": prov["dag_hash"], "input_hash": exec_input_hash,
                    "nodes": [recomputed_chain[n] for n in order if n in recomputed_chain]})
    stored = prov.get("provenance_chain_hash")
    print("provenance_chain_hash  stored     %s\n                       recomputed %s"
          % (stored or "(none)", recomputed))
    if stored is None:
        # The hash is written when the execution finishes; a running one has none yet.
        if execution.get("status") == "completed":
            problems.append("the execution completed but has no provenance_chain_hash")
        else:
            print("  (no stored execution hash yet: status %s)" % execution.get("status"))
    elif stored != recomputed:
        problems.append("provenance_chain_hash does not match the hash recomputed from the records")
    for p in problems:
        print("  BROKEN: " + p)
    ok = first_broken is None and not problems
    if "chain_valid" in prov and bool(prov["chain_valid"]) != ok:
        print("  note: the server reported chain_valid=%s" % json.dumps(prov["chain_valid"]))
    if ok:
        print("chain valid")
    elif first_broken is not None:
        print("chain BROKEN at node %s" % first_broken)
    else:
        print("chain BROKEN at the execution hash")
    return ok


# ---------------------------------------------------------------- input

def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def parse_json(text, what):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise UsageError("%s is not valid JSON: %s" % (what, e))


def fetch(url, token):
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return parse_json(response.read().decode("utf-8"), url)
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:500]
        raise UsageError("GET %s: HTTP %d %s" % (url, e.code, detail))
    except (urllib.error.URLError, OSError) as e:
        raise UsageError("GET %s: %s" % (url, e))


def read_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return parse_json(f.read(), path)
    except OSError as e:
        raise UsageError("cannot read %s: %s" % (path, e))


# ---------------------------------------------------------------- self-test

def self_test():
    bits = lambda h: struct.unpack(">d", bytes.fromhex(h))[0]
    cases = [  # (value, canonical text)
        ({"b": 1.0, "a": [1e21, 0.000001, -0.0], "\u20ac": "x", "\r": 2},
         '{"\\r":2,"a":[1e+21,0.000001,0],"b":1,"\u20ac":"x"}'),
        # RFC 8785 section 3.2.3: sorting by UTF-16 code units.
        ({"\u20ac": 0, "\r": 0, "\ufb33": 0, "1": 0, "\U0001f600": 0, "\u0080": 0, "\u00f6": 0},
         '{"\\r":0,"1":0,"\u0080":0,"\u00f6":0,"\u20ac":0,"\U0001f600":0,"\ufb33":0}'),
        # RFC 8785 section 3.2.2.2: string escaping.
        ("\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"/", '"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'),
        ("\x00\x1f\x7f\u2028\b\f\t", '"\\u0000\\u001f\x7f\u2028\\b\\f\\t"'),
        ([1.0, 1e-7, 1e20, 123.456, -5, 2**53, 2**60, True, None], "[1,1e-7,100000000000000000000,"
         "123.456,-5,9007199254740992,1152921504606847000,true,null]"),
    ]
    # RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text.
    for hex_bits, text in [
        ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"), ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"), ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ]:
        cases.append((bits(hex_bits), text))
    failures = 0
    for value, want in cases:
        got = jcs(value)
        if got != want:
            failures += 1
            print("FAIL %r: got %s, want %s" % (value, got, want))
    if H({}) != "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a":
        failures += 1
        print("FAIL sha256({}) = %s" % H({}))
    print("%d of %d self-tests passed" % (len(cases) + 1 - failures, len(cases) + 1))
    return failures == 0


# ---------------------------------------------------------------- main

def main(argv):
    parser = argparse.ArgumentParser(description="Re-verify an execution's provenance chain.")
    parser.add_argument("execution_id", nargs="?", help="execution to fetch from the API")
    parser.add_argument("--base", default=os.environ.get("GL_ORCHESTRATOR_URL", DEFAULT_BASE),
                        help="API base URL (default $GL_ORCHESTRATOR_URL or %s)" % DEFAULT_BASE)
    parser.add_argument("--file", help="saved GET /executions/{id}/provenance response")
    parser.add_argument("--execution-file", help="saved GET /executions/{id} response")
    parser.add_argument("--self-test", action="store_true", help="run the built-in JCS test vectors")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2  # argparse exits 2 on errors already; keep --help at 0
    if args.self_test:
        return 0 if self_test() else 1
    try:
        if args.file or args.execution_file:
            if not (args.file and args.execution_file) or args.execution_id:
                raise UsageError("offline use needs both --file and --execution-file, and no EXECUTION_ID")
            prov, execution = read_file(args.file), read_file(args.execution_file)
        elif args.execution_id:
            base = args.base.rstrip("/") + "/executions/" + urllib.parse.quote(args.execution_id, safe="")
            token = os.environ.get("GL_ORCHESTRATOR_TOKEN")
            prov, execution = fetch(base + "/provenance", token), fetch(base, token)
        else:
            raise UsageError("give an EXECUTION_ID, --file with --execution-file, or --self-test")
        # GET /executions/{id} wraps the row as {"execution": {...}}; accept the bare row too.
        execution = execution.get("execution", execution) if isinstance(execution, dict) else execution
        if not isinstance(prov, dict) or not isinstance(execution, dict) or "input_data" not in execution:
            raise UsageError("unexpected response shape (need the provenance object and execution.input_data)")
        return 0 if verify(prov, execution) else 1
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except (TypeError, ValueError, OverflowError, UnicodeError, KeyError) as e:
        # Values that cannot be canonicalised (e.g. a lone surrogate) cannot be verified either.
        print("error: cannot canonicalise the response: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
