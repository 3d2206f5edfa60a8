"""The run folder (torch-free): the one owner of its layout (every file name, history and prediction rows),
the model directory inside it, creating and replacing run folders safely, and reading finished runs back."""
