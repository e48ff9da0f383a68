"""step1x-edit: instruction-based image editing with the Step1X-Edit model.

The public API is imported lazily so that ``import step1x_edit`` stays cheap:
``Step1XEditPipeline`` and ``Step1XEditTransformer2DModel``.
"""

__version__ = "0.1.0"

__all__ = ["Step1XEditPipeline", "Step1XEditTransformer2DModel", "__version__"]


def __getattr__(name: str):
    if name == "Step1XEditPipeline":
        from .pipeline import Step1XEditPipeline

        return Step1XEditPipeline
    if name == "Step1XEditTransformer2DModel":
        from .models.transformer import Step1XEditTransformer2DModel

        return Step1XEditTransformer2DModel
    raise AttributeError(f"module 'step1x_edit' has no attribute {name!r}")
