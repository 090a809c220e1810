import pytest
import torch



@pytest.fixture(autouse=True)
def _small_torch():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def text_corpus(tmp_path):
    """A small deterministic text file corpus (spec string for load_corpus)."""
    import random
    rnd = random.Random(0)
    words = "the a binary scale expert router token weight sign matrix layer model bit".split()
    lines = [" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "." for _ in range(600)]
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(lines))
    return f"files:{p}"
