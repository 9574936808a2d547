"""A box for every image of a collection: the resumable run, COCO / CSV output, and the review decisions."""
