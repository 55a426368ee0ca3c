"""Pure helpers the tools share: statistics, run bookkeeping, cost counting, memory meters and
speed measurement. No command-line wording, no subprocesses, no figures: those live in tools/."""
