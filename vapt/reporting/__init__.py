"""Results as tables: ``vapt report`` (:mod:`.report`), ``vapt summary`` (:mod:`.summary`) and the one markdown
table writer both tools use (:mod:`.tables`). Each module is imported on its own."""
