"""Fit the search fusion's weights and query understanding's boosts and confidences on a labelled query set.

    manage.py fit_search_weights QUERIES.jsonl [--out mmsearch/search/fitted.json] [--holdout 0.3]
                                 [--precision 0.8] [--no-calibrate] [--passes 3]

QUERIES.jsonl: one labelled query a line, {"q": "ladies grey jumper", "relevant": {"attr.gender": ["Women"],
"attr.colour": ["Grey"], "attr.article_type": ["Sweaters"]}}: a product is relevant when it has one of the
values of every filter (spelled as the catalog spells them). Optional "spans" label what understanding should
read ([{"span": "jumper", "filter": "attr.article_type", "values": ["Sweaters"]}]); bench/query_understanding.py
--write-set tune writes such a file.

The set is split by a hash of each query's text into a fitting part and a held-out part (`--holdout`, 30 %).
On the fitting part:
  1. calibration (when spans are labelled): the embedding stage's similarity threshold is the lowest with at
     least `--precision` of its matches correct, and the typo and embedding confidences are logistic fits of
     correctness (their ECE on the held-out spans is reported);
  2. every query is gathered once through the engine (hybrid, understanding on, with the new calibration);
  3. coordinate ascent on mean precision@10 over WEIGHTS (lexical, lexical_partial, trigram, image_vector,
     understood; text_vector is the scale) and BOOSTS (one per filter the set's queries name), a step kept only
     when it gains more than --min-gain;
  4. the held-out part chooses among the starting values, the fitted boosts alone and everything fitted.
The file written holds WEIGHTS, BOOSTS and UNDERSTAND (read by mmsearch.search.config between DEFAULTS and
settings.MMSEARCH_SEARCH) and a report: precision@10 before and after, on both parts.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Fit search weights and understanding boosts on a labelled query set; write them to a settings file."

    def add_arguments(self, parser):
        parser.add_argument("queries", type=Path, help="labelled queries (JSONL)")
        parser.add_argument("--out", type=Path, help="weights file (default: MMSEARCH_SEARCH['WEIGHTS_FILE'])")
        parser.add_argument("--holdout", type=float, default=0.3, help="share of the set held out for the report")
        parser.add_argument("--precision", type=float, default=0.8,
                            help="precision the embedding stage's threshold is chosen for")
        parser.add_argument("--no-calibrate", action="store_true", help="keep the current UNDERSTAND settings")
        parser.add_argument("--passes", type=int, default=3)
        parser.add_argument("--min-gain", type=float, default=0.002,
                            help="smallest gain in mean precision@10 a step must bring (against noise)")

    def handle(self, *args, **opts):
        from django.conf import settings
        from django.test import override_settings

        from mmsearch.search import tuning, understanding
        from mmsearch.search.config import DEFAULTS, config

        try:
            rows = tuning.load_labelled(opts["queries"])
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if not 0 <= opts["holdout"] < 1:
            raise CommandError("--holdout must be in [0, 1)")
        out = opts["out"] or Path(config()["WEIGHTS_FILE"] or DEFAULTS["WEIGHTS_FILE"])
        fit_rows, held_rows = tuning.split(rows, opts["holdout"])
        if not fit_rows:
            raise CommandError("the fitting part is empty; lower --holdout or label more queries")
        self.stdout.write(f"{len(rows)} labelled queries: {len(fit_rows)} to fit, {len(held_rows)} held out")
        base = getattr(settings, "MMSEARCH_SEARCH", {}) or {}
        current = config()
        understand = dict(current["UNDERSTAND"])
        report: dict = {"queries": str(opts["queries"]), "fit": len(fit_rows), "held_out": len(held_rows),
                        "date": date.today().isoformat(), "database": settings.DATABASES["default"]["NAME"]}
        t0 = time.perf_counter()
        understanding.reset()
        if not opts["no_calibrate"] and any(r.get("spans") for r in fit_rows):
            cands, counts = tuning.span_candidates(fit_rows)
            calibrated = tuning.calibrate(cands, opts["precision"])
            understand.update(calibrated["UNDERSTAND"])
            report["calibration"] = {**calibrated["report"], "exact": counts}
            self.stdout.write(f"calibration on the fitting part: {json.dumps(calibrated['report'])}")
        layered = {**base, "WEIGHTS_FILE": None, "UNDERSTAND": understand,
                   "WEIGHTS": current["WEIGHTS"], "BOOSTS": current["BOOSTS"]}
        with override_settings(MMSEARCH_SEARCH=layered):
            understanding.reset()
            if held_rows and report.get("calibration"):
                held_cands, _ = tuning.span_candidates(held_rows)
                report["calibration"]["held_out"] = tuning.evaluate_candidates(held_cands)
                self.stdout.write(f"understanding on the held-out spans: {json.dumps(report['calibration']['held_out'])}")

            def progress(i, n):
                if i % 25 == 0 or i == n:
                    self.stdout.write(f"  gathered {i}/{n} ({time.perf_counter() - t0:.0f} s)")

            fit_table = tuning.Table.build(tuning.gather_all(fit_rows, progress=progress), fit_rows)
            held_table = tuning.Table.build(tuning.gather_all(held_rows, progress=progress), held_rows) if held_rows else None
        before_w = {**DEFAULTS["WEIGHTS"], "understood": 0.0}
        zero = {"default": 0.0}
        start_w, start_b = current["WEIGHTS"], current["BOOSTS"]
        fitted = tuning.fit(fit_table, start_w, start_b, passes=opts["passes"], min_gain=opts["min_gain"])
        # Three candidates: the starting values, the fitted boosts alone, everything fitted. The held-out part
        # picks among them (ties: the simpler), so a fit that only learnt the fitting part's noise is not kept.
        choices = {"start": (start_w, start_b), "fitted boosts": (start_w, fitted.boosts),
                   "fitted": (fitted.weights, fitted.boosts)}
        report["precision@10"] = {"fit": {"before (DEFAULTS, no understanding)": round(fit_table.precision(before_w, zero), 4),
                                          **{k: round(fit_table.precision(*v), 4) for k, v in choices.items()}}}
        chosen = "fitted"
        if held_table is not None:
            held = {k: round(held_table.precision(*v), 4) for k, v in choices.items()}
            report["precision@10"]["held_out"] = {
                "before (DEFAULTS, no understanding)": round(held_table.precision(before_w, zero), 4), **held}
            chosen = max(choices, key=lambda k: (held[k], -list(choices).index(k)))
        report["chosen"] = chosen
        weights_out, boosts_out = choices[chosen]
        report["trace"] = fitted.trace
        report["seconds"] = round(time.perf_counter() - t0, 1)
        data = {
            "WEIGHTS": {k: round(float(v), 4) for k, v in weights_out.items()},
            "BOOSTS": {k: round(float(v), 4) for k, v in boosts_out.items()},
            "UNDERSTAND": {k: understand[k] for k in ("EMBED_THRESHOLD", "EMBED_MARGIN", "CALIBRATION")},
            "report": report,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        understanding.reset()
        self.stdout.write(json.dumps(report["precision@10"], indent=1))
        self.stdout.write(f"kept: {chosen}")
        self.stdout.write(self.style.SUCCESS(f"wrote {out}"))
