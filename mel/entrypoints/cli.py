"""The ``mel`` command. Every subcommand takes an argv list and returns an exit code, so tests call
``main([...])`` in-process. Heavy imports happen inside the subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mel.errors import MelError

log = logging.getLogger("mel")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set retrieval.top_k=10 (repeatable)")


def _cfg(args: argparse.Namespace):  # noqa: ANN202
    """The validated config; its method (and ``--method``, when given) checked against the method registry here,
    where the config meets the registry."""
    from mel.config import load_config
    from mel.methods import registry

    cfg = load_config(args.config, args.overrides)
    registry.load_plugins(cfg.plugins)
    registry.check_name(cfg.method)
    if getattr(args, "method", None):
        registry.check_name(args.method)
    return cfg


def cmd_methods(args: argparse.Namespace) -> int:
    from mel.methods import registry
    from mel.steps import host_of

    cfg = _cfg(args)
    for name in registry.names():
        spec = registry.get(name)
        active = {s.name for s in spec.active_steps(cfg)}
        steps = " -> ".join(f"{s}@{host_of(c).name}" if s in active else f"({s}: off)"
                            for s, c in zip(spec.steps, spec.step_classes()))
        print(f"{name}: {steps}\n    {spec.description}")
    return 0


# ------------------------------------------------------------------------------------------ index
def cmd_index(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands

    cfg = _cfg(args)
    out = commands.index(cfg, out=args.out, kb=args.kb, dataset=args.dataset, data_dir=args.data_dir,
                         local=args.local, update=args.update, base=args.base, summaries=args.summaries)
    print(f"index {'version ' if args.update else ''}written to {out}")
    return 0


def cmd_augment_entities(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands

    cfg = _cfg(args)
    report = commands.augment_entities(cfg, out=args.out, kb=args.kb, dataset=args.dataset, data_dir=args.data_dir,
                                       local=args.local, limit=args.limit, ids_file=args.ids)
    print(report.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands
    from mel.errors import InputError

    cfg = _cfg(args)
    if args.port is not None:
        cfg.serve.port = args.port
    if args.switch_index is not None:
        if cfg.ray.address is None:  # a local `mel serve --index <root>` follows <root>/CURRENT
            current = commands.point_current(args.switch_index)
            print(f"{current} now names {args.switch_index}: a `mel serve` watching that root switches to it "
                  f"within serve.index_poll_s ({cfg.serve.index_poll_s}s)")
            return 0
        health = commands.switch_index(cfg, args.switch_index)
        print(f"now serving {health['index']['index_dir']} ({health['index']['entities']} entities)")
        return 0
    if args.index is None:
        raise InputError("give --index (the index to serve) or --switch-index (a new index for a running app)")
    commands.serve_forever(cfg, args.index)
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands

    cfg = _cfg(args)
    n = commands.link_batch(cfg, args.index, args.mentions, args.out, method=args.method, local=args.local)
    print(f"linked {n} mentions -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands

    cfg = _cfg(args)
    report = commands.evaluate(cfg, dataset=args.dataset, split=args.split, index_dir=args.index,
                               method=args.method, limit=args.limit, data_dir=args.data_dir,
                               report_path=args.report, batch_size=args.batch_size, sample=args.sample,
                               seed=args.seed, per_mention=args.per_mention, nil_withhold=args.nil_withhold)
    from mel.eval import format_table

    print(format_table(report))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mel.entrypoints import commands

    cfg = _cfg(args)
    cal, path = commands.calibrate(cfg, dataset=args.dataset, split=args.split, index_dir=args.index,
                                   method=args.method, fraction=args.nil_withhold, seed=args.seed,
                                   sample=args.sample, limit=args.limit, data_dir=args.data_dir, out=args.out,
                                   plot=args.plot, batch_size=args.batch_size,
                                   confidence=args.confidence == "logistic")
    at, without = cal.dev["at_threshold"], cal.dev["without_threshold"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    t = "none (never NIL)" if cal.threshold is None else f"{cal.threshold:.4f}"
    print(f"method {cal.method} on {args.dataset} {args.split}: {cal.dev['mentions']} mentions, "
          f"{cal.dev['mentions_nil']} expect NIL ({cal.dev['entities_hidden']} golds withheld, seed {args.seed})")
    what = (f"link confidence (logistic on {', '.join(cal.confidence['features'])})" if cal.confidence
            else cal.score)
    print(f"thresholded score: {what}")
    print(f"threshold {t}   score AUC {f(cal.auc)}{'' if cal.separable else '  (does NOT separate NIL well)'}")
    print(f"at the threshold: accuracy {f(at['accuracy'])}  NIL precision {f(at['nil_precision'])}  "
          f"recall {f(at['nil_recall'])}  F1 {f(at['nil_f1'])}  in-KB accuracy {f(at['in_kb_accuracy'])}")
    print(f"without one:      accuracy {f(without['accuracy'])}  in-KB accuracy {f(without['in_kb_accuracy'])}")
    print(f"calibration -> {path}" + (f"   plot -> {args.plot}" if args.plot else ""))
    return 0


def _flags_into(args: argparse.Namespace, section: object, keys: tuple[str, ...]) -> None:
    """Command-line flags that override a config section's fields of the same name (when given)."""
    for key in keys:
        if getattr(args, key) is not None:
            setattr(section, key, getattr(args, key))


def cmd_train_selector(args: argparse.Namespace) -> int:
    import json

    from mel.train.selector import train_selector

    cfg = _cfg(args)
    _flags_into(args, cfg.train.selector, ("limit", "steps"))
    report = train_selector(cfg, dataset=args.dataset, mentions_path=args.mentions, split=args.split,
                            index_dir=args.index, out=args.out, data_dir=args.data_dir, resume=args.resume,
                            overwrite=args.overwrite)
    losses = report["losses"]
    head = sum(losses[:10]) / max(1, len(losses[:10]))
    tail = sum(losses[-10:]) / max(1, len(losses[-10:]))
    ev = report.get("evaluation", {})
    print(json.dumps({"adapter": report["path"], "examples": report["examples"], "steps": report["steps"],
                      "trainable_share_pct": round(100 * report["trainable_share"], 3),
                      "loss_first10": round(head, 4), "loss_last10": round(tail, 4),
                      "train_seconds": report["train_seconds"],
                      "dev_accuracy_before": ev.get("before", {}).get("accuracy"),
                      "dev_accuracy_after": ev.get("after", {}).get("accuracy"),
                      "dev_shuffled_accuracy_before": ev.get("before", {}).get("shuffled_accuracy"),
                      "dev_shuffled_accuracy_after": ev.get("after", {}).get("shuffled_accuracy"),
                      "dev_retrieval_h@1": report["dev"]["retrieval_h@1_on_examples"]}, indent=2))
    return 0


def cmd_train_adapter(args: argparse.Namespace) -> int:
    import json

    from mel.train.clip_adapter import run_train_adapter

    cfg = _cfg(args)
    _flags_into(args, cfg.train.adapter, ("limit", "steps"))
    report = run_train_adapter(cfg, dataset=args.dataset, out=args.out, split=args.split, data_dir=args.data_dir,
                               resume=args.resume, overwrite=args.overwrite)
    losses = report["losses"]
    print(json.dumps({"adapter": report["path"], "image_encoder": report["image_encoder_id"], "dim": report["dim"],
                      "pairs": report["train_pairs"], "steps": report["steps"],
                      "resumed_from_step": report["resumed_from_step"],
                      "loss_first": round(losses[0], 4) if losses else None,
                      "loss_last": round(losses[-1], 4) if losses else None,
                      "trainable_params": report["trainable_params"], "frozen_params": report["frozen_params"],
                      "trainable_share_pct": round(100 * report["trainable_share"], 3),
                      "use_with": f"--set ameli.image.adapter_path={report['path']}"}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mel.entrypoints import demo

    return demo.run(args.config, args.overrides, workdir=args.workdir, port=args.port)


# ------------------------------------------------------------------------------------------ cluster
def cmd_submit(args: argparse.Namespace) -> int:
    from mel.entrypoints import submit

    cfg = _cfg(args)
    if args.address is not None:
        cfg.submit.address = args.address
    if args.no_wait:
        cfg.submit.wait = False
    if args.timeout is not None:
        cfg.submit.timeout_s = args.timeout
    submit.warn_relative_outputs(args.submit_command, args, sys.stderr)
    argv = submit.argv_from_namespace(args.local_parser, args)
    return submit.submit(cfg, args.submit_command, argv, log_level=args.log_level)


def cmd_cluster_render(args: argparse.Namespace) -> int:
    from mel.entrypoints import cluster_render

    for path in cluster_render.render(args):
        print(f"wrote {path}")
    return 0


def _add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    """`mel submit index|eval|link` (same arguments as the local commands) and `mel cluster render`."""
    s = sub.add_parser("submit", help="run `mel index|eval|link` as a job on a running Ray cluster")
    jobs = s.add_subparsers(dest="submit_command", required=True)
    for name in ("index", "eval", "link"):
        local = sub.choices[name]
        j = jobs.add_parser(name, parents=[local], add_help=False, help=f"`mel {name}` as a Ray job",
                            description=f"Submit `mel {name}` to the Ray cluster at submit.address (or "
                            "$RAY_ADDRESS), follow its logs, return its exit status. Paths are read on the cluster.")
        g = j.add_argument_group("submission")
        g.add_argument("--address", help="the cluster's job API, e.g. http://127.0.0.1:8265 (submit.address)")
        g.add_argument("--no-wait", action="store_true", help="return once submitted (submit.wait=false)")
        g.add_argument("--timeout", type=float, help="stop the job after this many seconds (submit.timeout_s)")
        j.set_defaults(func=cmd_submit, local_parser=local)

    s = sub.add_parser("cluster", help="KubeRay manifests generated from a mel config")
    cl = s.add_subparsers(dest="cluster_command", required=True)
    r = cl.add_parser("render", help="write the RayService (serving) and RayJob (index build) manifests")
    _common(r)
    from mel.entrypoints.cluster_render import add_render_arguments

    add_render_arguments(r)
    r.set_defaults(func=cmd_cluster_render)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mel", description="Multimodal entity linking on Ray.")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="embed a KB on Ray Data and build a faiss index directory")
    _common(s)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--kb", help="KB file (JSONL or Parquet) or a directory holding entities.jsonl/.parquet")
    src.add_argument("--dataset", help="a benchmark dataset name (its KB is indexed), e.g. richpedia-mel")
    src.add_argument("--update", metavar="DELTA", help="KB delta (JSONL/Parquet: upserts and {'id', 'op': "
                     "'delete'} records) applied to the index given with --from; only changed entities are embedded")
    s.add_argument("--from", dest="base", metavar="INDEX", help="with --update: the index directory to update, or "
                   "a versioned root (its CURRENT version)")
    s.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    s.add_argument("--out", help="index directory to write (appears only when complete; a vNNNN directory also "
                   "updates CURRENT beside it). Required, except with --update: default the next vNNNN beside --from")
    s.add_argument("--local", action="store_true", help="single process, no Ray (small KBs, debugging)")
    s.add_argument("--summaries", metavar="DIR", help="entity summaries (`mel augment entities --out DIR`) for "
                   "{summary} of index.entity_template; recorded in the manifest (sets index.summaries)")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("augment", help="LLM-generated texts (UniMEL): entity summaries, as a resumable Ray Data job")
    au = s.add_subparsers(dest="augment_command", required=True)
    a = au.add_parser("entities", help="summarise each entity with models.llm (augment.entities); "
                      "`mel index --summaries DIR` embeds the summaries")
    _common(a)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--kb", help="KB file (JSONL or Parquet) or a directory holding entities.jsonl/.parquet")
    src.add_argument("--dataset", help="a benchmark dataset name (its KB is summarised), e.g. richpedia-mel")
    a.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    a.add_argument("--out", required=True, help="summaries artifact directory (appears only when complete; a rerun "
                   "into it generates only entities whose prompt or model changed or that it lacks)")
    a.add_argument("--limit", type=int, help="summarise only the first N entities (of --ids when given)")
    a.add_argument("--ids", metavar="FILE", help="summarise only these entities (one id per line)")
    a.add_argument("--local", action="store_true", help="in this process, no Ray")
    a.set_defaults(func=cmd_augment_entities)

    s = sub.add_parser("serve", help="run the linking graph on Ray Serve (127.0.0.1 by default)")
    _common(s)
    s.add_argument("--index", help="index directory built by `mel index`, or a versioned root (vNNNN + CURRENT): "
                   "its CURRENT version is served and followed (serve.index_poll_s)")
    s.add_argument("--port", type=int, help="HTTP port (overrides serve.port)")
    s.add_argument("--switch-index", metavar="DIR", help="instead of starting a server: make the running app serve "
                   "this index without dropping requests (with ray.address: the app on that cluster, same --config/"
                   "--set; without: DIR is a vNNNN of the versioned root a local `mel serve --index ROOT` follows)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("link", help="batch-link a mentions JSONL file on Ray Data")
    _common(s)
    s.add_argument("--index", required=True, help="index directory built by `mel index`")
    s.add_argument("--mentions", required=True, help="mentions JSONL (see docs/kb-format.md)")
    s.add_argument("--out", required=True, help="results JSONL (appears only when complete)")
    s.add_argument("--method", help="linking method (default: config's method)")
    s.add_argument("--local", action="store_true", help="single process, no Ray")
    s.set_defaults(func=cmd_link)

    s = sub.add_parser("eval", help="link a benchmark split and report H@k, MRR, accuracy, NIL P/R, latency")
    _common(s)
    s.add_argument("--dataset", required=True, help="dataset name, e.g. richpedia-mel or wikimel")
    s.add_argument("--split", default="test", help="split name (train, dev, test)")
    s.add_argument("--index", required=True, help="index directory built from the dataset's KB "
                   "(built there first if it does not exist)")
    s.add_argument("--method", help="linking method (default: config's method)")
    s.add_argument("--limit", type=int, help="first N mentions only (a deterministic slice)")
    s.add_argument("--sample", type=int, help="score a fixed seeded sample of N mentions of the split (the same "
                   "mentions for every method and run with the same --seed); the report carries a 95%% CI for H@1")
    s.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    s.add_argument("--per-mention", action="store_true", help="add one row per mention (gold, answer, gold rank) "
                   "to the report")
    s.add_argument("--batch-size", type=int, default=64, help="mentions per linking batch")
    s.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    s.add_argument("--report", help="write the JSON report here")
    s.add_argument("--nil-withhold", type=float, metavar="F", help="NIL protocol: hide the gold entities of a "
                   "seeded fraction F of the mentions (--seed) from the KB for this run; they expect NIL")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("calibrate", help="choose a method's NIL threshold on dev with withheld golds and write it "
                       "beside the index (eval, link and serve then use it)")
    _common(s)
    s.add_argument("--dataset", required=True, help="dataset name, e.g. richpedia-mel or wikimel")
    s.add_argument("--split", default="dev", help="split to calibrate on (default: dev)")
    s.add_argument("--index", required=True, help="index directory built from the dataset's KB")
    s.add_argument("--method", help="linking method (default: config's method)")
    s.add_argument("--nil-withhold", type=float, default=0.1, metavar="F",
                   help="fraction of mentions whose gold is hidden (default 0.1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the withheld draw and of --sample (default 0)")
    s.add_argument("--sample", type=int, help="calibrate on a fixed seeded sample of N mentions")
    s.add_argument("--limit", type=int, help="first N mentions only")
    s.add_argument("--out", help="calibration file (default: <index>/calibration/<method>.json)")
    s.add_argument("--plot", help="also draw the precision/recall/accuracy curve as a PNG here")
    s.add_argument("--confidence", choices=("logistic", "none"), default="logistic",
                   help="threshold a link-confidence model fitted on the same run (default), or the method's raw "
                   "final score")
    s.add_argument("--batch-size", type=int, default=64, help="mentions per linking batch")
    s.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("train", help="train a model part (the LoRA selector, the CLIP image adapter)")
    tr = s.add_subparsers(dest="train_command", required=True)
    t = tr.add_parser("selector", help="LoRA-train the multiple-choice selector on labelled mentions (UniMEL)")
    _common(t)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="benchmark dataset whose --split is trained on, e.g. richpedia-mel")
    src.add_argument("--mentions", help="or: a mentions JSONL file with gold ids (your own labelled data)")
    t.add_argument("--split", default="train", help="split to train on (default: train)")
    t.add_argument("--index", required=True, help="index directory of the KB (built by `mel index`)")
    t.add_argument("--out", required=True, help="adapter folder to write (appears only when complete)")
    t.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    t.add_argument("--limit", type=int, help="train on a seeded sample of N mentions (train.selector.limit)")
    t.add_argument("--steps", type=int, help="optimizer steps (train.selector.steps)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in <out>.checkpoints")
    t.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder at --out")
    t.set_defaults(func=cmd_train_selector)
    t = tr.add_parser("adapter", help="train AMELI's residual CLIP image adapter contrastively (train.adapter)")
    _common(t)
    t.add_argument("--dataset", required=True, help="dataset with review and product images, e.g. ameli")
    t.add_argument("--split", default="train", help="split to train on (default: train)")
    t.add_argument("--out", required=True, help="adapter folder to write (appears only when complete)")
    t.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    t.add_argument("--limit", type=int, help="first N mentions of the split (train.adapter.limit)")
    t.add_argument("--steps", type=int, help="optimizer steps in all (train.adapter.steps)")
    t.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder at --out")
    t.set_defaults(func=cmd_train_adapter)

    s = sub.add_parser("methods", help="list the registered linking methods and their steps under the config")
    _common(s)
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("demo", help="index the shipped demo KB, serve it, link examples over HTTP")
    _common(s)
    s.add_argument("--workdir", help="where to put the demo index (default: a temp dir)")
    s.add_argument("--port", type=int, help="HTTP port (default: config serve.port)")
    s.set_defaults(func=cmd_demo)
    _add_cluster_commands(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every command's clean-up (Serve, Ray, temp files) runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        # which CPU build faiss loaded, every HTTP call, where a model was loaded from: not news
        for noisy in ("faiss", "httpx", "httpcore", "sentence_transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars too
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MelError as e:
        print(f"mel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"mel {args.command}: terminated", file=sys.stderr)
        return 143
    except SystemExit as e:
        import signal

        if e.code != signal.SIGTERM:  # Ray's driver SIGTERM handler exits with the signal number
            raise
        print(f"mel {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
