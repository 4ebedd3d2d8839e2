"""`CallBackLogging`: every `frequent` steps (rank 0) a speed/loss line and three TensorBoard scalars.
The first qualifying call only starts the timer."""
import logging
import time

from torch import distributed


class CallBackLogging:
    def __init__(self, frequent, total_step, batch_size, start_step=0, writer=None):
        self.frequent, self.total_step, self.batch_size = frequent, total_step, batch_size
        self.start_step, self.writer = start_step, writer
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.started = time.time()
        self.tic = None

    def __call__(self, global_step, loss, epoch, fp16, learning_rate, grad_scaler):
        if self.rank != 0 or global_step <= 0 or global_step % self.frequent:
            return
        if self.tic is None:
            self.tic = time.time()
            return
        speed = self.frequent * self.batch_size / max(time.time() - self.tic, 1e-9) * self.world_size
        per_step = (time.time() - self.started) / (global_step - self.start_step + 1)
        hours_left = per_step * (self.total_step - global_step - 1) / 3600
        if self.writer is not None:
            self.writer.add_scalar("time_for_end", hours_left, global_step)
            self.writer.add_scalar("learning_rate", learning_rate, global_step)
            self.writer.add_scalar("loss", loss.avg, global_step)
        scale = "   Fp16 Grad Scale: %2.f" % grad_scaler.get_scale() if fp16 else ""
        logging.info("Speed %.2f samples/sec   Loss %.4f   LearningRate %.6f   Epoch: %d   Global Step: %d%s"
                     "   Required: %1.f hours" % (speed, loss.avg, learning_rate, epoch, global_step, scale,
                                                   hours_left))
        loss.reset()
        self.tic = time.time()
