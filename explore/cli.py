"""`bitmos synth` and `bitmos sweep`."""

from __future__ import annotations

import json
import sys


def add_commands(sub) -> None:
    from bitmos.cliargs import float_in, non_negative_int
    from bitmos.explore.synth import DEFAULT_TIMEOUT_S, DEVICES, TOPS

    p = sub.add_parser("synth", help="synthesize the RTL for a config on an FPGA (Yosys + nextpnr): "
                                     "LUT/FF/BRAM/DSP, fmax, binary ops per LUT")
    p.add_argument("--config", default="small", help="accelerator config file or preset (default: small)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set rows=8 --set lanes=64 (repeatable)")
    p.add_argument("--target", choices=sorted(DEVICES), default="ecp5")
    devices = sorted({d for t in DEVICES.values() for d in t})
    p.add_argument("--device", choices=devices, default=None,
                   help="ecp5: 12k/25k/45k/85k (default 85k); ice40: hx1k/hx8k/lp8k/up5k (default hx8k)")
    p.add_argument("--package", default=None, help="device package (default: the device's usual one)")
    p.add_argument("--top", choices=TOPS, default="accelerator",
                   help="what to synthesize: the whole accelerator (default), its systolic array alone, or one PE")
    p.add_argument("--verilog", default=None,
                   help="synthesize this Verilog file instead of the bitmos RTL (top module: --top-module)")
    p.add_argument("--top-module", default="top", help="top module name of --verilog (default: top)")
    p.add_argument("--freq", type=float_in(0, low_open=True), default=100.0, help="target clock for nextpnr in MHz (default 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--io", action="store_true",
                   help="ecp5: place real IO buffers (default: out of context, so wide ports need no pins)")
    p.add_argument("--no-pnr", action="store_true",
                   help="stop after Yosys: netlist LUT/FF/BRAM/DSP counts, no placement and no fmax "
                        "(minutes instead of an hour for large arrays)")
    p.add_argument("--cache-dir", default=None, help="result cache (default ~/.cache/bitmos/synth)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")
    p.add_argument("--timeout", type=float_in(0, low_open=True), default=DEFAULT_TIMEOUT_S, help="seconds per tool run")
    p.add_argument("--keep", default=None, help="keep the work folder (Verilog, netlist, logs) here")
    p.add_argument("--record", default=None,
                   help="append the result to this JSON list of synthesis records (for the area model)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_synth)

    p = sub.add_parser("sweep", help="design-space exploration over configs and model shapes: "
                                     "tokens/s, energy/token, area; CSV, JSON, Pareto plot; resumable")
    p.add_argument("spec", help="sweep spec (TOML file) or a shipped spec name, e.g. llama7b; see docs/dse.md "
                                "(a spec with a [distill] table sweeps model axes too: docs/codesign.md, codesign)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: the spec's `out`, else "
                                                     "sweep-<spec name>)")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="local worker processes (default 2; 0 = evaluate in this process)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:port): evaluate points on that cluster")
    p.add_argument("--limit", type=non_negative_int, default=None, help="evaluate at most this many new points")
    p.add_argument("--backend", choices=("auto", "sim"), default=None,
                   help="timing backend: the compiled programs in the simulator's timing-only mode (the one "
                        "estimator, shared with bitmos estimate); kept for old sweep specs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_sweep)


def load_config(path: str, overrides: list[str]):
    """A config file or preset with ``FIELD=VALUE`` overrides (values parsed as TOML scalars)."""
    import dataclasses

    from bitmos.config import AcceleratorConfig
    from bitmos.errors import ConfigError

    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]

    cfg = AcceleratorConfig.load(path)
    if not overrides:
        return cfg
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        key, value = item.split("=", 1)
        try:
            data[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            data[key.strip()] = value.strip()
    if "name" not in {o.split("=", 1)[0].strip() for o in overrides}:
        data["name"] = cfg.name + "+" + ",".join(o.replace(" ", "") for o in overrides)
    return AcceleratorConfig.from_dict(data, source="--set")


def _synth(args) -> int:
    from pathlib import Path

    from bitmos.config import AcceleratorConfig
    from bitmos.errors import BitmosUserError
    from bitmos.explore import synth as S
    from bitmos.explore.rtlbridge import binary_ops_per_cycle

    log = (lambda msg: print(f"[synth] {msg}", file=sys.stderr)) if not args.json else None
    if args.device and args.device not in S.DEVICES[args.target]:
        raise BitmosUserError(f"device {args.device!r} is not a {args.target} device; choose one of "
                              f"{', '.join(S.DEVICES[args.target])}")
    cfg = None
    if args.verilog:
        from bitmos.fileio import read_text_file

        verilog = read_text_file(args.verilog, "Verilog file")
        top, ops, cfgd, name = args.top_module, None, None, Path(args.verilog).stem
    else:
        cfg = load_config(args.config, args.set)
        verilog, top = S.rtl_verilog(cfg, args.top)
        ops, cfgd, name = binary_ops_per_cycle(cfg, args.top), cfg.to_dict(), cfg.name
    res = S.synthesize(verilog, top, target=args.target, device=args.device, package=args.package,
                       freq_mhz=args.freq, seed=args.seed, out_of_context=False if args.io else None,
                       cache_dir=args.cache_dir, use_cache=not args.no_cache, timeout=args.timeout,
                       workdir=args.keep, binary_ops_per_cycle=ops, config=cfgd, config_name=name, log=log,
                       component=None if args.verilog else args.top, pnr=not args.no_pnr)
    res_d = res.to_dict()
    if args.record:
        from bitmos.explore.area import append_record

        append_record(args.record, res_d)
    if args.json:
        print(json.dumps(res_d, indent=2))
    else:
        print(res.summary())
    return 0


def _sweep(args) -> int:
    return sweep_command(args)


def sweep_command(args, run=None) -> int:
    """``bitmos sweep``: ``run`` is the sweep runner (default :func:`bitmos.explore.sweep.run_sweep`; the
    application layer passes one that also runs co-design specs, bitmos.app.codesign.run_sweep)."""
    from bitmos.explore.sweep import SweepSpec, run_sweep

    spec = SweepSpec.load(args.spec)
    summary = (run or run_sweep)(spec, out=args.out, workers=args.workers, scheduler=args.scheduler,
                                 limit=args.limit, backend=args.backend,
                                 log=None if args.json else (lambda m: print(m, file=sys.stderr)))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['points']} points ({summary['computed']} computed now, {summary['skipped']} "
              f"already done, {summary['infeasible']} infeasible) in {summary['seconds']:.1f} s; "
              f"backend {summary['backend']}; Pareto front {summary['pareto']} points")
        for k in ("csv", "json", "png", "fronts", "model_costs"):
            if summary.get(k):
                print(f"  {k}: {summary[k]}")
    return 0
