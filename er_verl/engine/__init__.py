"""SGLang side of er_verl. Imported only inside SGLang processes (schedulers, tokenizer manager),
through the ``sglang.srt.plugins`` entry point ``er_verl.engine.plugin:register``."""
