mod delta;
