"""Quality tools: PSNR/SSIM and the preset harness (`quality`), the attention-difference profiler (`profiler`),
calibration (`calibrate`) and their `pab` CLI subcommands (`cli`)."""
