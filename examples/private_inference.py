"""Private inference: classify someone else's images with someone else's model, seeing neither.

Two organisations, one computation:

* party 0, the **model owner**, trains a small CNN on handwritten digits (scikit-learn's 8x8
  digits, bundled, no download) and secret-shares its weights;
* party 1, the **data owner**, secret-shares its test images;
* both run the unmodified ``torch.nn`` model on the encrypted tensors, and only the predicted
  labels are opened, to the data owner alone. The model owner learns nothing about the images,
  the data owner nothing about the weights (beyond the predictions themselves).

Run it (``make demo``)::

    crypten-lite launch -n 2 --dealer examples/private_inference.py [--quick]

The data owner prints private accuracy, plaintext accuracy, agreement of the two, per-image
latency, and the rounds and bytes the inference cost, then a ``RESULT {json}`` line. With
``crypten-lite launch -n 3`` the same script runs with a third, helper party
(``examples/three_parties.py`` does exactly that).

To measure agreement, the data owner needs the plaintext model's predictions too. A real
deployment would not do this: here, *for the demo's check only*, the model owner reveals its
weights to the data owner after the private run (clearly marked below).
"""

from __future__ import annotations

import torch
from _common import (
    DigitsCNN,
    load_digits_split,
    measure,
    parse_args,
    print_result,
    train_digits_cnn,
)

import crypten_lite

MODEL_OWNER = 0
DATA_OWNER = 1


def main(world_size: int | None = None, description: str = __doc__) -> None:
    """Run the example as this party; ``world_size`` requires that many parties."""
    args = parse_args(description, batch_size=120)
    party = crypten_lite.init()
    if world_size is not None and party.world_size != world_size:
        raise SystemExit(
            f"this example needs {world_size} parties: crypten-lite launch -n {world_size} --dealer"
        )
    rank = party.rank
    role = {MODEL_OWNER: "model owner", DATA_OWNER: "data owner"}.get(rank, "helper")
    print(f"I am party {rank} of {party.world_size}: the {role}")

    # 1. The model owner trains its model in plaintext, on its own data. Every other party builds
    #    the same architecture: encrypt_module takes the shapes from it and the values from src.
    if rank == MODEL_OWNER:
        x_train, y_train, _, _ = load_digits_split()
        model = train_digits_cnn(x_train, y_train, epochs=5 if args.quick else 10)
        print(f"trained a CNN with {sum(p.numel() for p in model.parameters())} weights")
    else:
        model = DigitsCNN().eval()  # placeholder weights, never used: only shapes matter
    crypten_lite.encrypt_module(model, src=MODEL_OWNER)
    # The weights stay fixed during inference: open each weight's Beaver mask once, reuse it.
    crypten_lite.nn.reuse_weight_masks(model)

    # 2. The data owner secret-shares its images; the others pass None and learn only the shape.
    x_test = y_test = None
    if rank == DATA_OWNER:
        _, _, x_test, y_test = load_digits_split()
    party.comm.barrier()  # wait for the model owner's training, so it is not timed below
    images = crypten_lite.cryptensor(x_test, src=DATA_OWNER)
    n_images = images.shape[0]

    # 3. Private inference, batch by batch: ordinary torch code on encrypted tensors. The argmax
    #    is computed privately too, so only the labels are ever opened — to the data owner
    #    (dst=DATA_OWNER); every other party gets None.
    with torch.no_grad():
        with measure(party) as cost, crypten_lite.profile() as prof:
            labels = [model(batch).argmax(dim=1) for batch in images.split(args.batch_size)]
            predicted = torch.cat(labels).get_plain_text(dst=DATA_OWNER)
        # Latency of a single query (what one user waits for: rounds dominate on a network).
        with measure(party) as one:
            model(images[:1]).argmax(dim=1).get_plain_text(dst=DATA_OWNER)

    # 4. Demo-only check: the model owner reveals its weights to the data owner, who then runs
    #    the plaintext model on its images to compare. A real deployment skips this step.
    crypten_lite.decrypt_module(model, dst=DATA_OWNER)

    if rank != DATA_OWNER:
        # What the other parties hold: shares of everything, openings of masked values only.
        print(f"I computed on {images!r} and learned the predictions: {predicted}")
    else:
        assert predicted is not None and x_test is not None and y_test is not None
        with torch.no_grad():
            plain = model(x_test).argmax(dim=1)
        private_acc = (predicted == y_test).float().mean().item()
        plain_acc = (plain == y_test).float().mean().item()
        agreement = (predicted == plain).float().mean().item()
        print(prof.table(sort_by="seconds"))
        print(f"images classified privately : {n_images} (batches of {args.batch_size})")
        print(f"private accuracy            : {private_acc:.2%}")
        print(f"plaintext accuracy          : {plain_acc:.2%}")
        print(f"agreement with plaintext    : {agreement:.2%}")
        print(f"{f'all {n_images} images':<28}: {cost}")
        print(f"throughput                  : {1000 * cost.seconds / n_images:.1f} ms per image")
        print(f"latency of one image        : {one}")
        print_result(
            n_images=n_images,
            private_acc=round(private_acc, 4),
            plain_acc=round(plain_acc, 4),
            agreement=round(agreement, 4),
            seconds=round(cost.seconds, 3),
            ms_per_image=round(1000 * cost.seconds / n_images, 2),
            rounds=cost.rounds,
            bytes_sent=cost.bytes_sent,
            bytes_received=cost.bytes_received,
            latency_one_image_s=round(one.seconds, 4),
            rounds_one_image=one.rounds,
            world_size=party.world_size,
        )
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
