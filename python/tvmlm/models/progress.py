"""Progress bars for the slow steps (compile, weight conversion)."""


def progress_bar(**kwargs):
    """A tqdm bar without tqdm's monitor thread (an Engine must not leave threads behind)."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0
    return tqdm.tqdm(**kwargs)
