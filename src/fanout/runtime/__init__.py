"""Where the stages run: one entry point per message (``pipeline``), driven by the
long-running ``worker`` or by the AWS Lambda handlers (``lambdas``)."""
