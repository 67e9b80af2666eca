"""The networks the project trains: semantic and instance students, the CAM classifier, WeakSAM's WSOD
head and detector; their checkpoints, and their runtimes (torch, ONNX Runtime, TensorRT) behind one
interface (`models.students.runtime`)."""
