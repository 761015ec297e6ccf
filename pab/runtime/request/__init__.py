"""What a generation request may ask for, checked without torch (`params`)."""
