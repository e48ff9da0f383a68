"""The 11 editing task categories of Step1X-Edit (kept free of heavy imports so the CLI can list them fast)."""

TASKS: tuple[str, ...] = (
    "subject_addition",
    "subject_removal",
    "subject_replacement",
    "background_change",
    "color_alteration",
    "material_modification",
    "text_modification",
    "motion_change",
    "portrait_editing",
    "style_transfer",
    "tone_transformation",
)
