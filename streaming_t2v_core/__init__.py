"""StreamingT2V core (torch/diffusers only, no ComfyUI imports). Implementation lands with its own issue."""
