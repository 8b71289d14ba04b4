"""Learn: short guided experiments on timestep-aware conditioning, each one call (`run_lesson`)."""

from ella_demo.learn.lessons import LESSONS, LessonOptions, LessonResult, run_lesson

__all__ = ["LESSONS", "LessonOptions", "LessonResult", "run_lesson"]
