"""What the project knows of each dataset without reading it: its name, its class counts, the size of its
official training split, and the one check that a train/validation split leaves a batch to train on.

Imported by the params check and the train stage; the archive reader (cifar.py) takes its class counts from
here, so that neither the check nor training depends on the reader's code (an edit there retrains nothing).
"""

DATASETS = ("cifar10", "cifar100")
TRAIN_IMAGES = 50_000  # in the official training split of both CIFARs, the same number of each class
NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}


def num_classes(params, dataset):
    """The classes of dataset under params.yaml's data.<dataset>.labels (cifar100: fine 100, coarse 20)."""
    return NUM_CLASSES[dataset, params["data"][dataset].get("labels", "fine")]


def official_split(classes, validation, limit):
    """(images left after the hold-out, training images) of the official training split, as
    entry.balanced_split takes them: validation // classes of each class first, then limit // classes of
    each class from the rest (limit None: all the rest)."""
    rest = max(TRAIN_IMAGES // classes - validation // classes, 0) * classes
    return rest, rest if limit is None else min(rest, limit // classes * classes)


def split_error(dataset, train, classes, images, rest, train_images):
    """None when the split leaves at least one batch, else why not (params.yaml's words, without the file):
    of `images` in the training split, `rest` are left after train.validation is held out, of which
    train.limit takes `train_images`. train: params.yaml's train section."""
    batch, limit = train["batch_size"], train["limit"]
    if train_images >= batch:
        return None
    if limit is not None and train_images < rest:  # the subset, not the hold-out, leaves too few
        return (
            f"train.limit = {limit}: gives {train_images} training images of {dataset} (the subset is "
            f"class-balanced: {limit // classes} of each of {classes} classes), fewer than one batch "
            f"(train.batch_size = {batch}); raise it to at least {-(-batch // classes) * classes}, or null "
            f"for all images"
        )
    return (
        f"train.validation = {train['validation']}: leaves {rest} of the {images} training images of "
        f"{dataset}, fewer than one batch (train.batch_size = {batch}); lower it"
    )
