"""Synthetic stand-ins for what cannot be downloaded: people (:mod:`.people`), ReID datasets
in the layouts of the real ones (:mod:`.datasets`), camera scenes (:mod:`.scenes`) and
whole sites with a camera graph and ground truth (:mod:`.site`). numpy + OpenCV only."""
