"""The demo, in three rooms: :mod:`~unistad_edu.demo.page` builds and launches the Gradio page;
:mod:`~unistad_edu.demo.logic` is what the page does without Gradio (decoding an upload, the default model,
scores, heatmaps, verdicts, the model card); :mod:`~unistad_edu.demo.serving` is the process around it (the
command line, a child process on loopback, the load test, the screenshot)."""
