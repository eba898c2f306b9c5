"""The offline quickstart: build a small policy that can do a checkable task, then GRPO it with
efficient_sglang and with sglang and compare (``er-verl quickstart``)."""
