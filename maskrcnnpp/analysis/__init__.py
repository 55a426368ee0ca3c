"""Models measured, compared and drawn: the library of tools/benchmark.py, compare.py,
training_curve.py and draw_wiring.py.

Statistics (:mod:`.stats`), run bookkeeping (:mod:`.runs`), costs (:mod:`.cost`), memory meters
(:mod:`.memory`) and speed measurement (:mod:`.speed`); the comparison's aggregation
(:mod:`.comparison`) and its written report, figure included (:mod:`.comparison_report`); the
benchmark's tables (:mod:`.benchmark_report`); a run's validation curve (:mod:`.training_curve`);
the picture of a neck's wiring (:mod:`.wiring_figure`). No argument parsing, no subprocesses, no
progress bars of their own: those stay in tools/.
"""
