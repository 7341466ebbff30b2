"""The worked examples of KH 2021 section 4 behind ``assocmem demo``: MNIST pattern completion in
every effective model and the two-layer network (``mnist``), KanjiVG characters (``kanji``), a
colour memory with N_f = 3 (``colors``) and an immune-repertoire-sized memory (``repertoire``).
Each module has ``run(out, quick=False, ...)`` returning its result records and report path.
"""

EXAMPLES = ("mnist", "kanji", "colors", "repertoire")

__all__ = ["EXAMPLES"]
