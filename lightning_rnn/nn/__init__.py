"""Pure-PyTorch recurrent layers (never imports lightning)."""

__all__: list[str] = []
