"""The synthetic world: procedurally drawn scenes from which all 11 editing tasks are made with exact ground truth."""

from .generators import TASKS, EditSample, edit_scenes, generate_sample, reverse_sample
from .world import Face, Person, Scene, Shape, Sign, edit_region, render

__all__ = [
    "TASKS",
    "EditSample",
    "Face",
    "Person",
    "Scene",
    "Shape",
    "Sign",
    "edit_region",
    "edit_scenes",
    "generate_sample",
    "render",
    "reverse_sample",
]
