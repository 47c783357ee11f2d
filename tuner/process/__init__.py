"""What both wings share: the spec/result contract of a training process, the parent's runner and
classifier, and the child's skeleton."""
