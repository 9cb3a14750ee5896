"""Render bench/results/*.json as the tables in docs/benchmarks.md (between the GENERATED markers).

    python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- GENERATED:BEGIN -->", "<!-- GENERATED:END -->"


def _load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def _f(v: object, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def accuracy_table(acc: dict) -> list[str]:
    lines = ["### Accuracy (test splits, text side, full KB as candidates; percent)", "",
             "| dataset | row | mentions | H@1 | H@1 95% CI | H@5 | H@10 | H@20 | MRR | accuracy | mentions/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, methods in sorted(acc.items()):
        for m, r in sorted(methods.items(), key=lambda kv: (bool(kv[1].get("sample")), kv[0])):
            if "hits@1" not in r:
                continue  # a row with NIL figures only
            ci = r.get("hits@1_ci95")
            n = f"{r.get('mentions')}" + (f" (sample, seed {r['sample']['seed']})" if r.get("sample") else "")
            lines.append(f"| {ds} | {m} | {n} | {_f(r.get('hits@1'))} | "
                         f"{'–' if not ci else f'{ci[0]:.1f}-{ci[1]:.1f}'} | {_f(r.get('hits@5'))} | "
                         f"{_f(r.get('hits@10'))} | {_f(r.get('hits@20'))} | {_f(r.get('mrr'))} | "
                         f"{_f(r.get('accuracy'))} | {_f(r.get('mentions_per_s'))} |")
    coll = [f"{ds} {m}: {r['flags']['name_collision']['results']} answers with a colliding name "
            f"({r['flags']['name_collision']['correct']} right)" for ds, ms in sorted(acc.items())
            for m, r in sorted(ms.items()) if (r.get("flags") or {}).get("name_collision")]
    if coll:
        lines += ["", "Name collisions (GEMEL): " + "; ".join(coll) + "."]
    lines += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for ms in acc.values() for r in ms.values()
                                                   if r.get("command")})), ""]
    return lines


def nil_table(acc: dict) -> list[str]:
    rows = [(ds, m, r) for ds, ms in sorted(acc.items()) for m, r in sorted(ms.items()) if "nil_f1" in r]
    if not rows:
        return []
    lines = ["### NIL under the withheld-gold protocol (percent)", "",
             "Golds of 10% of the mentions hidden from the KB for the run (`mel eval --nil-withhold 0.1`); the "
             "threshold (on the link confidence fitted by `mel calibrate`, or the raw score) chosen on a dev sample "
             "under the same protocol, then applied to a test sample. *H@1 without* is the same method on the same "
             "test mentions with nothing withheld; *in-KB acc.* counts a NIL answer on an in-KB mention as wrong.", "",
             "| dataset | row | test mentions (NIL) | NIL P | NIL R | NIL F1 | accuracy (NIL a class) | in-KB acc. | "
             "in-KB H@1 | H@1 without | AUC raw score (dev) | AUC used (dev / test) | threshold |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, m, r in rows:
        p = r.get("nil_protocol") or {}
        t = r.get("nil_threshold")
        kind = "confidence" if "confidence" in str(r.get("nil_score")) else "raw"
        lines.append(f"| {ds} | {m} | {p.get('test_mentions')} ({p.get('test_nil_expected')}) | "
                     f"{_f(r.get('nil_precision'))} | {_f(r.get('nil_recall'))} | {_f(r.get('nil_f1'))} | "
                     f"{_f(r.get('nil_accuracy'))} | {_f(r.get('nil_in_kb_accuracy'))} | {_f(r.get('nil_in_kb_h1'))} | "
                     f"{_f(r.get('nil_h1_without_withheld'))} | {_f(r.get('nil_raw_auc_dev'), 2)} | "
                     f"{_f(r.get('nil_auc_dev'), 2)} / {_f(r.get('nil_auc_test'), 2)} | "
                     f"{'none' if t is None else f'{t:.3f}'} ({kind}) |")
    lines += ["", "Curves: `bench/results/nil_curves.json`; plots: " + ", ".join(
        f"[{ds} {m}](figures/{Path(r['nil_figure']).name})" for ds, m, r in rows if r.get("nil_figure")) + ".",
        "Commands: " + "; ".join(f"`{r['nil_command']}`" for _, _, r in rows if r.get("nil_command")), ""]
    return lines


def selection_latency_table(r: dict) -> list[str]:
    return ["### LLM selection per mention: in-process engine vs the Serve graph at concurrency 1 (ms, medians)", "",
            "| config | mentions | select in-process | select in Serve | Serve / in-process | Serve request wall |",
            "|---|---|---|---|---|---|",
            f"| {r['config']} | {r['mentions']} (first {r['warmup']} not counted) | "
            f"{_f(r['select_ms_median_in_process'])} | {_f(r['select_ms_median_serve_c1'])} | "
            f"{_f(r['ratio_serve_over_in_process'], 2)} | {_f(r['request_ms_median_serve_c1'])} |", "",
            f"Command: `{r['command']}` (one run, both sides on the same machine, one mention per call).", ""]


def tuning_table(t: dict) -> list[str]:
    lines = ["### Selector fusion weight (dev split; H@1 percent by weight w of the LLM)", "",
             "| run | method | adapter | dev mentions | w=0 (incoming score) | best w | H@1 at best | w=1 (LLM only) |",
             "|---|---|---|---|---|---|---|---|"]
    for ds, r in sorted(t.items()):
        best = r["h@1_by_weight"][str(r["best_weight"])]
        lines.append(f"| {ds} | {r.get('method', 'llm-select')} | {r.get('adapter') or 'none (zero-shot)'} | "
                     f"{r['mentions']} | {_f(r['retrieval_h@1'])} | {r['best_weight']} | {_f(best)} | "
                     f"{_f(r['llm_only_h@1'])} |")
    return lines + [""]


def indexing_table(ix: dict) -> list[str]:
    lines = ["### Indexing throughput (`mel index` on Ray Data vs a single-process loop, same model and batch)", "",
             "| KB | entities | workers | Ray entities/s | loop entities/s | ratio (Ray / loop) |",
             "|---|---|---|---|---|---|"]
    runs = ix.get("runs") or [{"workers": ix["workers"], "ray_entities_per_s": ix["ray_entities_per_s"],
                               "ratio": ix["ratio"]}]
    for r in runs:
        lines.append(f"| {ix['kb']} | {ix['entities']} | {r['workers']} | {_f(r['ray_entities_per_s'])} | "
                     f"{_f(ix['loop_entities_per_s'])} | {_f(r['ratio'], 2)} |")
    return lines + [""]


def index_scale_table(sc: dict) -> list[str]:
    lines = ["### Index types at scale (synthetic 384-d vectors; recall@10 vs exact search)", "",
             "| entities | index | build s | peak RSS MB | index MB | recall@10 | queries/s |",
             "|---|---|---|---|---|---|---|"]
    for r in sc["runs"]:
        lines.append(f"| {r['entities']:,} | `{r['index']}` | {_f(r.get('build_s'))} | {_f(r.get('peak_rss_mb'), 0)} | "
                     f"{_f(r.get('index_mb'))} | {_f(r.get('recall@10'), 3)} | {_f(r.get('qps'), 0)} |")
    return lines + [""]


def serving_table(sv: dict) -> list[str]:
    ip = sv["in_process"]
    lines = ["### Linking over HTTP vs in-process (one mention per request)", "",
             "| client concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
             f"| in-process | {_f(ip['rps'], 2)} | {_f(ip['p50_ms'])} | {_f(ip['p99_ms'])} | – |"]
    for c, r in sv["concurrency"].items():
        lines.append(f"| {c} | {_f(r['rps'], 2)} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r.get('errors', 0)} |")
    return lines + [""]


def serving_ab_table(ab: dict) -> list[str]:
    lines = ["### The declared linking graph against the graph before it (llm-select over HTTP, side by side)", "",
             "| client concurrency | before: req/s | after: req/s | ratio | before: p50 ms | after: p50 ms |",
             "|---|---|---|---|---|---|"]
    ip = ab["in_process"]
    lines.append(f"| in-process | {_f(ip['old']['rps'], 2)} | {_f(ip['new']['rps'], 2)} | "
                 f"{_f(ip['rps_ratio_new_over_old'], 2)} | {_f(ip['old']['p50_ms'])} | {_f(ip['new']['p50_ms'])} |")
    for c, r in ab["levels"].items():
        lines.append(f"| {c} | {_f(r['old']['rps'], 2)} | {_f(r['new']['rps'], 2)} | "
                     f"{_f(r['rps_ratio_new_over_old'], 2)} | {_f(r['old']['p50_ms'])} | {_f(r['new']['p50_ms'])} |")
    return lines + ["", f"Command: `{ab['command']}` (before: commit {ab['old_commit']}). {ab['note']}", ""]


def selector_training_table(st: dict) -> list[str]:
    dev = st["dev_accuracy"]
    before, after = dev.get("before") or {}, dev.get("after") or {}

    def acc(d: dict) -> str:
        return f"{_f(d.get('accuracy'))} / {_f(d.get('shuffled_accuracy'))}"

    lines = [f"### Selector training on {st['dataset']} (`mel train selector`, LoRA on SmolLM2-135M, 2 CPU cores)", "",
             "Dev accuracy of the LLM alone on dev mentions whose gold is among the options: options in retrieval "
             "order as served / options shuffled (a position prior scores ~20% there; only that figure shows the "
             "adapter reads the options).", "",
             "| dataset | examples | steps x batch | LoRA | trainable | lr | examples/s | train min | "
             "dev: candidates H@1 | dev: LLM before | dev: LLM after |", "|" + "---|" * 11,
             f"| {st['dataset']} | {st['examples']} | {st['steps']} x {st['batch_size']} | "
             f"r={st['rank']} on {'/'.join(m.removesuffix('_proj') for m in st['target_modules'])} | "
             f"{_f(st['trainable_share_pct'], 2)}% | {st['lr']:g} {st.get('schedule', 'constant')} | "
             f"{_f(st['examples_per_s'], 2)} | {_f(st['train_seconds'] / 60)} | "
             f"{_f(st['dev']['retrieval_h@1_on_examples'])} | {acc(before)} | {acc(after)} |", ""]
    if dev.get("by_step"):
        lines += ["By step: " + ", ".join([f"0: {acc(before)}"] + [f"{k}: {acc(v)}" for k, v in dev["by_step"].items()]
                                         + [f"{st['steps']}: {acc(after)}"]), ""]
    if st.get("init_adapter"):
        lines += [f"Started from the adapter `{st['init_adapter']['path']}` (weights "
                  f"{st['init_adapter']['weights_sha256']}; `train.selector.init_adapter`): \"before\" scores it.", ""]
    if st.get("loss_by_block"):
        lines += ["Training loss (mean per block of steps): " + ", ".join(
            f"{b['steps']}: {b['mean']:.2f}" for b in st["loss_by_block"]), ""]
    return lines + [f"Command: `{st['command']}`", ""]


def augment_table(a: dict) -> list[str]:
    s, big = a["sizes"]
    lines = [f"### Entity summaries (`mel augment entities`) on {a['dataset']}, 2 CPU cores", "",
             f"{a['llm']}, greedy, at most {a['max_tokens']} tokens, {a['batch_size']} prompts per engine call. Rate: "
             f"marginal, ({big} - {s}) / (t{big} - t{s}), so engine start-up is taken out; wall: the {big}-entity run.",
             "", "| how | entities/s | wall s, " + str(big) + " entities |", "|---|---|---|",
             f"| Ray Data job, 1 engine actor | {_f(a['ray_entities_per_s'], 2)} | {_f(a['ray_wall_s_' + str(big)])} |",
             f"| plain loop over the same engine, in process | {_f(a['loop_entities_per_s'], 2)} | "
             f"{_f(a['loop_wall_s_' + str(big)])} |", "",
             f"Ray / loop: {a['ray_over_loop']:.2f}. Projected for whole KBs here: " + ", ".join(
                 f"{k} ({a['kb_entities'][k]:,} entities) {v:g} h" for k, v in a["projected_hours_here"].items()) + ".",
             "", f"Command: `{a['command']}`", ""]
    return lines


def ameli_tuning_table(t: dict) -> list[str]:
    lines = ["### AMELI fusion tuned on dev (`bench/tune_ameli.py`; H@1 percent)", "",
             "`final = p x incoming (re-ranked) + (1 - p) x text stream`; the text stream scores attribute statements "
             "with the scorer named (no NLI checkpoint can be had here: the re-ranking cross-encoder's relevance). "
             "Ties go to the smaller p.", "",
             "| dataset | dev mentions | text scorer | no text stream (p = 1), filter on / off | best, filter on | "
             "best, filter off |", "|---|---|---|---|---|---|"]
    for ds, r in sorted(t.items()):
        b = r["best"]

        def best(x: dict) -> str:
            return f"{x['aggregation']}, p = {x['prior_weight']}: {_f(x['dev_hits@1'])}"

        nt = r["no_text_stream_hits@1"]
        lines.append(f"| {ds} | {r['sample']} (seed {r['seed']}) | {r['text_scorer']} | {_f(nt['on'])} / "
                     f"{_f(nt['off'])} | {best(b['filter_on'])} | {best(b['filter_off'])} |")
    lines += ["", "Sweeps: `bench/results/ameli_tuning.json`.", ""]
    return lines


def ameli_sample_table(a: dict) -> list[str]:
    lines = [f"### AMELI on the generated AMELI-format family sample ({a['entities']} products, "
             f"{a['test_mentions']} test reviews of which {a['test_nil']} NIL)", "",
             "Product lines sold in variants that differ by one attribute; every review names its variant's value. "
             "Built so that attribute filtering matters: the index embeds `{name}. {description}` only, so retrieval "
             "cannot tell the variants apart. Every row runs configs/ameli.yaml (re-ranking on, so `retrieval` is "
             "retrieval + re-ranking). No NIL threshold (NIL reviews count as misses).", "",
             "| method | H@1 | H@1 95% CI | MRR | accuracy | candidates filtered | gold filtered | mentions/s |",
             "|---|---|---|---|---|---|---|---|"]
    for m, r in sorted(a["methods"].items(), key=lambda kv: kv[1]["hits@1"]):
        f = r.get("filter") or {}
        ci = r["hits@1_ci95"]
        lines.append(f"| {m} | {_f(r['hits@1'])} | {ci[0]:.1f}-{ci[1]:.1f} | {_f(r['mrr'])} | {_f(r['accuracy'])} | "
                     f"{f.get('candidates_filtered', '–')} | {f.get('gold_filtered', '–')} | "
                     f"{_f(r['mentions_per_s'])} |")
    img = a.get("images")
    if img:
        ad = img["adapter"]
        lines += ["", "With photos (colour variants' photos have their colour, 80% of reviews carry one, and half "
                  f"of those name no value in their text: {img['test_unnamed']} of the test reviews, where only the "
                  "photo tells): the image stream on a tiny random open_clip model (no CLIP weights can be had "
                  f"here), the residual adapter trained on the train split ({ad['pairs']} pairs, {ad['steps']} "
                  f"steps, loss {ad['loss_first']} -> {ad['loss_last']}, {ad['trainable_params']:,} trainable "
                  "parameters), lambda (text weight) and p tuned on dev.", "",
                  "| row | lambda | p | dev H@1 | test H@1 | H@1 95% CI | accuracy | mentions/s |",
                  "|---|---|---|---|---|---|---|---|"]
        t = img["ameli (text only)"]
        lines.append(f"| ameli (text only; configs/ameli.yaml) | – | – | – | {_f(t['hits@1'])} | "
                     f"{t['hits@1_ci95'][0]:.1f}-{t['hits@1_ci95'][1]:.1f} | {_f(t['accuracy'])} | "
                     f"{_f(t['mentions_per_s'])} |")
        for m in ("ameli+images", "ameli+images-no-adapter"):
            r = img[m]
            ci = r["hits@1_ci95"]
            lines.append(f"| {m} | {r['lam']} | {r['prior_weight']} | {_f(r['dev_hits@1'])} | {_f(r['hits@1'])} | "
                         f"{ci[0]:.1f}-{ci[1]:.1f} | {_f(r['accuracy'])} | {_f(r['mentions_per_s'])} |")
    lines += ["", f"Command: `{a['command']}`", ""]
    return lines


def gemel_table(g: dict) -> list[str]:
    lines = ["### GEMEL: name trie and generation (`gemel`, beam 1 and 4)", "",
             f"{g['llm']} via {g['decoding']}; prompts with {g['demos']} in-context demonstrations from the training "
             f"split's demonstration index (MiniLM), at most {g['prompt_budget']} tokens; {g['sample']} test mentions "
             f"(fixed sample, seed {g['seed']}). Failures split into a wrong name and the right name given to another "
             "entity bearing it.", "",
             "| dataset | entities | names | colliding names | trie nodes | build s | JSON MB | beam | generate "
             "s/mention (batch mean) | H@1 | wrong name | right name, wrong id | collided (right) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, r in sorted(g["datasets"].items()):
        for beam, b in sorted(r["beams"].items()):
            lines.append(f"| {ds} | {r['entities']:,} | {r['names']:,} | {r['colliding_names']} | "
                         f"{r['trie_nodes']:,} | {_f(r['trie_build_s'], 2)} | {_f(r['trie_json_mb'], 2)} | {beam} | "
                         f"{_f(b['s_per_mention_median'], 2)} | {_f(b['hits@1'])} | {b['wrong_name']} | "
                         f"{b['right_name_wrong_id']} | {b['collided']} ({b['collided_right']}) |")
    lines += ["", f"Command: `{g['command']}`", ""]
    return lines


def main() -> int:
    parts: list[str] = []
    for name, fn in [("accuracy.json", accuracy_table), ("accuracy.json", nil_table),
                     ("selection_tuning.json", tuning_table), ("unimel_tuning.json", tuning_table),
                     ("selection_latency.json", selection_latency_table),
                     ("indexing.json", indexing_table),
                     ("index_scale.json", index_scale_table), ("serving.json", serving_table),
                     ("serving_graph_ab.json", serving_ab_table), ("selector_training.json", selector_training_table),
                     ("selector_training_wikimel.json", selector_training_table), ("augment.json", augment_table),
                     ("ameli_tuning.json", ameli_tuning_table), ("ameli_sample.json", ameli_sample_table),
                     ("gemel.json", gemel_table)]:
        data = _load(name)
        if data:
            parts += fn(data)
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + BEGIN + "\n" + "\n".join(parts) + "\n" + END + tail)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
