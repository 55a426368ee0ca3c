"""Models measured and compared side by side: the library of tools/benchmark.py and compare.py.

Statistics (:mod:`.stats`), run bookkeeping (:mod:`.runs`), costs (:mod:`.cost`), memory meters
(:mod:`.memory`) and speed measurement (:mod:`.speed`); the comparison's aggregation
(:mod:`.comparison`) and its written report, figure included (:mod:`.comparison_report`); the
benchmark's tables (:mod:`.benchmark_report`). No argument parsing, no subprocesses, no progress
bars of their own: those stay in tools/.
"""
