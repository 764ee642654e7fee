import torch

from initprobe.train.verifier import choose_best


def test_choose_best_takes_the_smallest_d_among_the_first_k_candidates():
    candidates = torch.arange(12.0).reshape(3, 4)          # 3 outputs x 4 candidates
    d = torch.tensor([[3.0, 1.0, 2.0, 0.0],
                      [0.5, 2.0, -1.0, 4.0],
                      [9.0, 8.0, 7.0, 6.0]])
    assert choose_best(candidates, d).tolist() == [3.0, 6.0, 11.0]
    assert choose_best(candidates, d, k=2).tolist() == [1.0, 4.0, 9.0]
    assert choose_best(candidates, d, k=1).tolist() == [0.0, 4.0, 8.0]
    images = torch.randn(3, 4, 1, 2, 2)
    assert torch.equal(choose_best(images, d, k=3)[1], images[1, 2])
