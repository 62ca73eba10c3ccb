#!/usr/bin/env python3
"""Summarize an Autobahn|TestSuite fuzzingclient report (servers/index.json).

  summarize.py --outdir REPORT/servers --wslog REPORT/wstest.log [--url URL] [--elapsed S]

A case fails if its behavior is FAILED or its close behavior is FAILED or UNCLEAN; OK,
NON-STRICT, INFORMATIONAL, UNIMPLEMENTED (and close WRONG CODE / FAILED BY CLIENT, which
Autobahn itself shows as non-strict) count as passed. Planned cases without a result
(server stopped answering) count as failed. Last line: "autobahn: N passed, M failed".
Exit status: 0 if M == 0, else 1.
"""
import argparse
import html
import json
import os
import re
import sys

PASS = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
CLOSE_FAIL = {"FAILED", "UNCLEAN"}


def key(cid):
    return [int(x) if x.isdigit() else x for x in cid.split(".")]


def clean(text):
    text = re.sub(r"<br\s*/?>", " ", text or "", flags=re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


def short(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(detail, r):
    """one line: what the case sends (+ payload hint) -- why it failed"""
    raw = detail.get("description", "") or ""
    desc = short(clean(re.split(r"<br\s*/?>|\n", raw, maxsplit=1, flags=re.I)[0]), 80)
    m = re.search(r"(?:MESSAGE|Payload):\s*(?:<br\s*/?>)?\s*(0x)?([0-9a-fA-F]+)\b", raw)
    if m:
        desc += " [payload %s]" % short(m.group(2), 40)
    why = []
    res = clean(detail.get("result", ""))
    if r["behavior"] not in PASS and res and not res.startswith("Actual events match"):
        why.append(res)
    if r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
        rc = clean(detail.get("resultClose", ""))
        if rc and rc not in why:
            why.append(rc)
    return desc + (" -- " + "; ".join(why) if why else "")


def planned_cases(wslog):
    try:
        with open(wslog, errors="replace") as f:
            for line in f:
                m = re.search(r"will run (\d+) test cases", line)
                if m:
                    return int(m.group(1))
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", required=True, help="the fuzzingclient outdir (holds index.json)")
    ap.add_argument("--wslog", default="", help="wstest output log (for the planned case count)")
    ap.add_argument("--url", default="?")
    ap.add_argument("--elapsed", default="?")
    args = ap.parse_args()

    planned = planned_cases(args.wslog) if args.wslog else None
    index_path = os.path.join(args.outdir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("no usable report at %s: %s" % (index_path, e))
        print("autobahn: 0 passed, %d failed" % (planned or 1))
        return 1
    results = {}
    for _agent, cases in index.items():
        results.update(cases)

    def counts(field):
        c = {}
        for r in results.values():
            c[r[field]] = c.get(r[field], 0) + 1
        names = ORDER + sorted(k for k in c if k not in ORDER)
        return "  ".join("%s=%d" % (n, c.get(n, 0)) for n in names)

    failed = [cid for cid in sorted(results, key=key)
              if results[cid]["behavior"] not in PASS or results[cid]["behaviorClose"] in CLOSE_FAIL]

    print("Autobahn|TestSuite fuzzingclient vs %s: %d cases in %ss (report: %s/index.html)"
          % (args.url, len(results), args.elapsed, args.outdir))
    if args.wslog and os.path.exists(args.wslog):
        with open(args.wslog, errors="replace") as f:
            if "wsaccel" not in f.read(4000):
                print("  (fuzzer runs without wsaccel: 9.* timings include slow pure-Python validation)")
    print("  behavior:      " + counts("behavior"))
    print("  behaviorClose: " + counts("behaviorClose"))
    perf = [(r.get("duration", 0), cid) for cid, r in results.items() if cid.startswith("9.")]
    if perf:
        print("  9.* timings:   %d cases, %.1fs total, slowest %s (%d ms)"
              % (len(perf), sum(d for d, _ in perf) / 1000.0, max(perf)[1], max(perf)[0]))
    missing = 0
    if planned is not None and planned > len(results):
        missing = planned - len(results)
        print("  NOT RUN: %d of %d planned cases have no result (server unreachable or crashed?)"
              % (missing, planned))
    if failed:
        print("Failed cases (behavior/behaviorClose, close code sent by the server):")
        for cid in failed:
            r = results[cid]
            desc = ""
            try:
                with open(os.path.join(args.outdir, r["reportfile"])) as f:
                    desc = describe(json.load(f), r)
            except (OSError, ValueError, KeyError):
                pass
            code = r.get("remoteCloseCode")
            print("  %-8s %s/%s server-close=%s  %s"
                  % (cid, r["behavior"], r["behaviorClose"], "-" if code is None else code, desc))
    nfail = len(failed) + missing
    print("autobahn: %d passed, %d failed" % (len(results) - len(failed), nfail))
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
