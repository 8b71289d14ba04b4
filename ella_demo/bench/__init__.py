"""Benchmarks behind `python -m ella_demo bench`.

speed.py times the engine against diffusers' own pipeline, cold and warm; trace_size.py measures
the bytes of an SD1.5 512x512 trace on models with SD1.5's layout; sessions.py reads the serving
app's memory while many browser sessions come and go.
"""

BENCH_PROMPT = (
    "A red fox sitting beside a blue wooden boat on a snowy beach at sunset, "
    "three white birds flying above, watercolor style"
)
GUIDANCE = 10.0
