"""Regenerates service/canaries.json, the edit guard's default canary prompts, from the train splits.

    python -m service.canaries_build [--data /work/shared/data] [--per-source 300] [--out service/canaries.json]

Canaries are NQ questions (zsRE train `loc` fields) and CounterFact train `neighborhood_prompts`, interleaved
so that the first N of the file mix both kinds. Only the train splits are read, and every prompt that also
occurs anywhere in a dev split is dropped (1,563 of the 4,167 distinct zsRE train `loc` questions recur as dev
`loc` questions): a canary is never an evaluation prompt. Only prompts are stored; the answers depend on the
served model and are computed at startup. The same inputs always give the same file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_OUT = Path(__file__).with_name("canaries.json")
MAX_CHARS = 120  # long prompts cost guard time on every edit and add nothing a short one does not


def dev_prompts(data: Path) -> set[str]:
    """Every prompt the dev splits use: edits, rephrases, locality and neighborhood prompts."""
    zsre = json.loads((data / "zsre" / "dev.json").read_text())
    cf = json.loads((data / "counterfact" / "dev.json").read_text())
    out = {r["src"] for r in zsre} | {r["loc"] for r in zsre if r.get("loc")}
    out |= {p for r in zsre
            for p in ([r["rephrase"]] if isinstance(r.get("rephrase"), str) else r.get("rephrase") or [])}
    for r in cf:
        out |= set(r.get("neighborhood_prompts", [])) | set(r.get("paraphrase_prompts", []))
        out.add(r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]))
    return out


def spread(items: list[str], n: int) -> list[str]:
    """n evenly spaced items, so the canaries cover the whole file rather than its first records."""
    if len(items) < n:
        raise ValueError(f"only {len(items)} usable prompts, {n} wanted")
    return [items[i * len(items) // n] for i in range(n)]


def usable(prompts: list[str], exclude: set[str]) -> list[str]:
    seen, out = set(), []
    for p in prompts:
        if p not in seen and p not in exclude and p.strip() and len(p) <= MAX_CHARS:
            seen.add(p)
            out.append(p)
    return out


def build(data: Path, per_source: int) -> list[str]:
    exclude = dev_prompts(data)
    zsre = json.loads((data / "zsre" / "train.json").read_text())
    cf = json.loads((data / "counterfact" / "train.json").read_text())
    nq = spread(usable([r["loc"] for r in zsre if r.get("loc")], exclude), per_source)
    neighbors = spread(usable([p for r in cf for p in r.get("neighborhood_prompts", [])], exclude), per_source)
    return [p for pair in zip(nq, neighbors) for p in pair]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--per-source", type=int, default=300)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    prompts = build(args.data, args.per_source)
    args.out.write_text(json.dumps(prompts, indent=0, ensure_ascii=False) + "\n")
    print(f"wrote {len(prompts)} canary prompts to {args.out}")


if __name__ == "__main__":
    main()
