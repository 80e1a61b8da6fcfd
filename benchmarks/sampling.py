"""Time episode sampling and the bundled data's load time (median of repeats).

python benchmarks/sampling.py
"""

from __future__ import annotations

from timing import interleaved, median

from fastadapt.data import EpisodeSampler, load_omniglot
from fastadapt.data.omniglot import load_time_seconds


def main() -> None:
    loads = [load_time_seconds() for _ in range(5)]
    print(f"bundled Omniglot load (read + decompress, 1623x20x28x28): median {median(loads) * 1000:.0f} ms over 5")
    data = load_omniglot("vinyals", "train")
    for ways, shots, queries in ((5, 1, 15), (20, 5, 15)):
        sampler = EpisodeSampler(data, ways, shots, queries, seed=0)
        sampler.sample(32)
        times = interleaved({"sample": lambda sampler=sampler: sampler.sample(32)}, 200, warmup=0)
        ms = times.median_wall("sample") * 1000
        print(f"sample 32 tasks {ways}-way {shots}-shot {queries}-query: median {ms:.2f} ms over 200")


if __name__ == "__main__":
    main()
