"""The demo model's factory: how the small model shipped in ``step1x_edit/assets/demo`` is built and described.

Everything here serves that one model and the experiments that shaped it, not the product: the library (pipeline,
models, training, data, evaluation, serving) never imports this package. ``step1x-edit train-demo`` runs the recipe
(:mod:`~step1x_edit.demo.build`, :mod:`~step1x_edit.demo.recipe`), ``step1x-edit train-vae`` trains a small
FLUX-layout autoencoder (:mod:`~step1x_edit.demo.vae`); :mod:`~step1x_edit.demo.components` builds its tokenizer
and text encoder, :mod:`~step1x_edit.demo.delta` holds its DiT (which predicts the change to the source latents)
and :mod:`~step1x_edit.demo.card` writes its model card. Loading the shipped model imports
:mod:`~step1x_edit.demo.delta` (its ``model_index.json`` names that class, and diffusers imports it by name).
"""
