"""What methods share: the literature's UNet, losses, EMA, ramp-ups, SSL4MIS's unlabeled weight, feature
perturbations, strong views and CutMix, post-processing, pretrained-checkpoint loading. A method imports
these; a block never imports a method."""
