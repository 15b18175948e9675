"""sparsecc cache show|clear|path|calibrate: the timing cache of measured decisions.

Entries hold evidence (paired speedups with their intervals, the load, when, threads, spinning),
never verdicts; ``show`` lists them, ``clear`` deletes the file (the next compile measures again),
``path`` prints where it is, ``calibrate`` measures this machine's calibration of the analytic
model (used where a timing is inconclusive; a measured compile builds it when first needed).
"""

from __future__ import annotations

from sparsecc.commands._common import print_json
from sparsecc.tables import text_table, unique_prefixes, wrap_column


def register(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="show, clear or locate the timing cache", description=__doc__)
    parser.add_argument("action", choices=["show", "clear", "path", "calibrate"], help="what to do")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="the cache file. "
                             "Default: $SPARSECC_TIMING_CACHE, else ~/.cache/sparsecc/timing-cache.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="calibrate: ONNX Runtime threads (as the passes' `threads`). Default: 1")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.errors import OptionError
    from sparsecc.lowering import open_timing_cache

    cache = open_timing_cache(args.timing_cache)
    if cache.path is None:
        raise OptionError("the timing cache is off ($SPARSECC_TIMING_CACHE or --timing-cache is 'off')",
                          fix="give a file with --timing-cache FILE")
    if args.action == "path":
        print_json({"path": str(cache.path), "exists": cache.path.exists()}) if args.json else print(cache.path)
        return 0
    if args.action == "clear":
        count = cache.clear()
        print_json({"path": str(cache.path), "cleared": count}) if args.json else \
            print(f"cleared {count} entr{'y' if count == 1 else 'ies'} ({cache.path} removed)")
        return 0
    if args.action == "calibrate":
        return _calibrate(cache, args)
    return _show(cache, args)


def _calibrate(cache, args) -> int:
    from sparsecc.errors import OptionError
    from sparsecc.lowering import TimingCache, build_calibration, timing_environment
    from sparsecc.lowering.calibration import calibration_fields

    if args.threads < 1:
        raise OptionError("--threads must be at least 1")
    calibration = build_calibration(args.threads)
    from sparsecc.measure.evidence import too_busy

    busy = too_busy(args.threads, calibration.load.per_core)
    stored = busy is None
    if stored:
        cache.put(TimingCache.key(calibration_fields(timing_environment(args.threads))), calibration.to_entry())
        cache.save()
    if args.json:
        print_json({**calibration.to_entry(), "stored": stored, "path": str(cache.path)})
    else:
        print(calibration.describe())
        print(f"stored in {cache.path}" if stored else
              f"NOT stored: the machine was too busy to trust it ({busy}); run it again later")
    return 0


def _show(cache, args) -> int:
    from sparsecc.measure.cached import describe_entry

    rows = [{"key": key, **describe_entry(entry)} for key, entry in sorted(cache.entries.items())]
    if args.json:
        print_json({"path": str(cache.path), "entries": rows})
        return 0
    print(f"{cache.path}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    # entries that measured the same kind of thing read alike: the key is what tells them apart
    ids = unique_prefixes([r["key"] for r in rows])
    evidence = [r for r in rows if r["form"] == "evidence"]
    if evidence:
        print(_evidence_table(evidence, ids))
    for r in rows:
        if r["form"] == "calibration":
            print(f"calibration {ids[r['key']]} ({r['threads']} thread(s), {r['load']}, {r['taken_at']}): "
                  f"{r['subject']}")
    older = [ids[r["key"]] for r in rows if r["form"] == "older"]
    if older:
        print(f"{len(older)} older entr{'y' if len(older) == 1 else 'ies'} without evidence ({', '.join(older)}; "
              "never reused; `sparsecc cache clear` removes them)")
    if rows:
        print("key: the start of each entry's key, enough to tell the entries apart (--json lists whole keys)")
    return 0


SUBJECT_WIDTH = 60  # what was measured, wrapped (never cut) so the table stays readable in a terminal


def _evidence_table(rows: list[dict], ids: dict[str, str]) -> str:
    table = [[ids[r["key"]], r["what"], r["subject"], r["cpu"], r["wall"], r["pairs"], r["threads"],
              f"{r['load']} ({r['load_before']}->{r['load_after']})", r["taken_at"]] for r in rows]
    return text_table(wrap_column(table, 2, SUBJECT_WIDTH),
                      ["key", "what", "measured", "CPU speedup [90% CI]", "wall speedup [90% CI]", "pairs", "threads",
                       "load", "taken"])
