"""Evaluation: DeepFashion2 retrieval Acc@k, box IoU and the challenge submission format."""
