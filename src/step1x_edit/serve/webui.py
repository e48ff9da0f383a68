"""The web UI: a Gradio page over one :class:`~step1x_edit.serve.service.EditService`.

An image, an instruction, the model's settings under "Settings" (steps, guidance, working size, strength, seed)
and the edited image with the seed that made it; for a v1.2 model also thinking and reflection, with every round's
image and the reasoning shown. Clickable examples come from the synthetic world's example
scenes unless others are given. ``create_ui(service).launch()`` serves it alone; ``step1x-edit serve`` mounts it
at ``/ui`` beside the HTTP API.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from ..errors import Step1XEditError
from ..pipeline import DEMO_MODEL_DIR
from ..reasoning import DEFAULT_MAX_TRIES, MAX_TRIES, supports_reasoning
from .service import MAX_RANDOM_SEED, EditService

# Uploads and results in Gradio's cache: every CACHE_SWEEP_SECONDS, files older than CACHE_MAX_AGE_SECONDS are
# deleted (and all of them when the server stops).
CACHE_SWEEP_SECONDS = 600
CACHE_MAX_AGE_SECONDS = 3600

DEMO_NOTE = (" This is the small built-in demo model, trained on synthetic scenes at 96 px: it makes background, "
             "tone, style and text edits partly and leaves most small local edits undone. Serve the released weights "
             "with `--model DIR` for real edits.")


def create_ui(service: EditService, examples: list[tuple[str, str]] | None = None) -> gr.Blocks:
    """The Gradio app for ``service``; ``examples`` are (image path, instruction) pairs (default: the synthetic
    world's example scenes). Its ``example_files`` are the only files besides uploads its requests may name."""
    defaults, limits = service.defaults, service.limits
    reasoning_ui = supports_reasoning(service.pipeline.version)
    if examples is None:
        examples = _synthetic_examples()
    with gr.Blocks(title="Step1X-Edit", analytics_enabled=False,  # no usage reports to third parties
                   delete_cache=(CACHE_SWEEP_SECONDS, CACHE_MAX_AGE_SECONDS)) as app:
        gr.Markdown(f"## Step1X-Edit\nModel: `{service.name}` ({service.pipeline.version}). Upload an image, say "
                    "what to change, press **Edit** (or Enter)." + (DEMO_NOTE if _is_demo(service) else ""))
        with gr.Row():
            with gr.Column():
                source = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="source")
                # One line that grows to four: Enter edits (in a textbox of several lines it would add a line).
                instruction = gr.Textbox(label="Instruction", lines=1, max_lines=4, max_length=limits.max_prompt_chars,
                                         elem_id="instruction",
                                         placeholder='e.g. make the sky stormy; change the text "OPEN" to "CLOSED"')
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    steps = gr.Slider(1, limits.max_steps, value=defaults["num_inference_steps"], step=1,
                                      label="Steps")
                    guidance = gr.Slider(0.0, limits.max_guidance, value=defaults["guidance_scale"], step=0.5,
                                         label="Guidance scale (1 or less: no classifier-free guidance)")
                    size_level = gr.Slider(16, limits.max_size_level, value=defaults["size_level"], step=16,
                                           label="Working size (about size² pixels)")
                    strength = gr.Slider(0.05, 1.0, value=defaults["strength"], step=0.05,
                                         label="Strength (1: from pure noise; lower keeps more of the source)")
                    # A browser holds integers exactly only up to 2**53 - 1 (JavaScript numbers).
                    seed = gr.Number(value=42, precision=0, minimum=0, maximum=MAX_RANDOM_SEED, label="Seed",
                                     elem_id="seed")
                    randomize = gr.Checkbox(value=True, label="New random seed each edit")
                choices = []
                if reasoning_ui:
                    with gr.Accordion("Thinking and reflection", open=False, elem_id="reasoning"):
                        choices = [gr.Checkbox(value=False, label="Think first: rewrite the instruction into "
                                               "concrete edits"),
                                   gr.Checkbox(value=True, label="Reflect: judge each edit, retry, keep the best round"),
                                   gr.Slider(1, MAX_TRIES, value=DEFAULT_MAX_TRIES, step=1, label="Rounds at most")]
                run = gr.Button("Edit", variant="primary")
            with gr.Column():
                result = gr.Image(label="Edited", type="pil", format="png", interactive=False, elem_id="result")
                details = gr.Markdown(elem_id="details")
                rounds = [gr.Gallery(label="Rounds", columns=3, elem_id="rounds")] if reasoning_ui else []
                again = gr.Button("Edit this result further")
        if examples:
            gr.Examples(examples=[[str(path), text] for path, text in examples], inputs=[source, instruction])

        def on_edit(image, text, step_count, scale, size, amount, seed_value, new_seed, *reasoning):
            edited = run_for_ui(service, image, text, step_count, scale, size, amount, seed_value, new_seed, *reasoning)
            shown = _shown(edited)
            if not reasoning_ui:
                return shown
            return *shown, [(item.image, f"round {item.index + 1}: {item.decision or 'edited'}")
                            for item in (edited.reasoning[0].rounds if edited.reasoning else [])]

        gr.on([run.click, instruction.submit], on_edit, api_name="edit",
              inputs=[source, instruction, steps, guidance, size_level, strength, seed, randomize, *choices],
              outputs=[result, seed, details, *rounds])
        again.click(lambda edited: edited, inputs=[result], outputs=[source], api_visibility="private")
    app.example_files = [str(path) for path, _ in examples]
    return app


def edit_for_ui(service: EditService, image, instruction, steps, guidance, size_level, strength, seed, randomize):
    """One press of **Edit**: (edited image, the seed used, a line of details); input errors become Gradio
    errors shown on the page."""
    return _shown(run_for_ui(service, image, instruction, steps, guidance, size_level, strength, seed, randomize))


def run_for_ui(service: EditService, image, instruction, steps, guidance, size_level, strength, seed, randomize,
               think=None, reflect=None, max_tries=None):
    """The edit of one press of **Edit** (with a v1.2 model's thinking and reflection choices); input errors become
    Gradio errors shown on the page."""
    if image is None:
        raise gr.Error("Upload an image first.")
    if seed is None and not randomize:
        raise gr.Error("Enter a seed, or tick 'New random seed each edit'.")
    try:
        result = service.edit(
            image, instruction or "", num_inference_steps=int(steps), guidance_scale=float(guidance),
            size_level=int(size_level), strength=float(strength), seed=None if randomize else int(seed),
            think=think, reflect=reflect, max_tries=None if max_tries is None else int(max_tries),
        )
    except Step1XEditError as error:
        raise gr.Error(str(error)) from error
    return result


def _shown(result):
    """(edited image, seed, details): size, seed and time, and the reasoning trace when there is one."""
    width, height = result.images[0].size
    details = f"{width}×{height}, seed {result.seeds[0]}, {result.seconds:.2f} s"
    if result.reasoning:  # in a code block: the reflections' <#Think> tags are not HTML
        details += "\n\n```\n" + result.reasoning[0].summary() + "\n```"
    return result.images[0], result.seeds[0], details


def _is_demo(service: EditService) -> bool:
    loaded_from = service.pipeline.config.get("_name_or_path")
    return loaded_from is not None and Path(loaded_from).resolve() == DEMO_MODEL_DIR.resolve()


def _synthetic_examples() -> list[tuple[str, str]]:
    """The synthetic world's example scenes (a shape, a sign, a person, a face), written to a temporary folder."""
    from ..data.synthetic.examples import render_example_images

    folder = Path(tempfile.mkdtemp(prefix="step1x-edit-examples-"))
    return [(entry["path"], entry["instruction_en"]) for entry in render_example_images(folder)]
